"""Block expansion (as in LLaMA Pro): new decoder layers on top of a trained model that start as the identity.

Each new layer's attention output projection (`o_proj`) and MLP down projection (`down_proj`) start at zero, so the
layer adds nothing to the residual stream and the expanded model computes exactly what the original did; training
grows them from there. The reward recipe uses it: a score head reads the last position's top hidden state, and
checking an answer against what the model itself would have said needs layers above the ones that say it.
"""

from __future__ import annotations

from .errors import ConfigError

__all__ = ["expanded_config", "zero_new_layers"]


def expanded_config(config, count: int):
    """`config` with `count` more decoder layers; a per-layer list (`layer_types`) repeats its last entry."""
    if count < 0:
        raise ConfigError(f"expand_layers: expected 0 or more new layers, got {count}")
    text_config = config.get_text_config()
    layer_types = getattr(text_config, "layer_types", None)
    if isinstance(layer_types, list) and layer_types and count:
        text_config.layer_types = layer_types + layer_types[-1:] * count
    text_config.num_hidden_layers += count
    return config


def zero_new_layers(model, first_new: int) -> None:
    """Zero the output projections of decoder layers `first_new` and above (see the module's docstring)."""
    layers = getattr(model.base_model, "layers", None)
    new = list(layers[first_new:]) if layers is not None else []
    if not new or not all(_has_output_projections(layer) for layer in new):
        raise ConfigError(
            f"expand_layers: needs decoder layers with self_attn.o_proj and mlp.down_proj (Llama, Qwen, Mistral style); "
            f"{type(model).__name__} has none"
        )
    for layer in new:
        for projection in (layer.self_attn.o_proj, layer.mlp.down_proj):
            projection.weight.data.zero_()
            if projection.bias is not None:
                projection.bias.data.zero_()


def _has_output_projections(layer) -> bool:
    return hasattr(getattr(layer, "self_attn", None), "o_proj") and hasattr(getattr(layer, "mlp", None), "down_proj")
