"""What a recipe's output folder holds, for `hftrain export`, read from its JSON files alone (nothing loaded), and
the types the export's two halves share (`hftrain.export`: command line and files; `hftrain.export_formats`: torch).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .errors import ConfigError, HFTrainError, ModelLoadError

__all__ = ["ExportFailed", "ExportRequest", "ModelFolder", "inspect_model_folder"]

# The architecture name's ending says which head the folder holds (transformers' own naming convention).
_HEADS = (("ForCausalLM", "causal-lm"), ("ForSequenceClassification", "sequence-classification"))
_SEQ2SEQ_HEADS = ("ForConditionalGeneration", "ForSeq2SeqLM")
_UNETS = ("UNet2DModel", "UNet2DConditionModel")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# Copied beside the export so it can be used without the training folder: config, generation settings, tokenizer.
_SIDECARS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "tokenizer.model",
)
_ALLOWED_MODELS = (
    "a causal LM (*ForCausalLM), a seq2seq model (*ForConditionalGeneration), a sequence classifier "
    "(*ForSequenceClassification) or a diffusion pipeline / UNet (UNet2DModel, UNet2DConditionModel)"
)


class ExportFailed(HFTrainError):
    """The exporter could not convert the model, or the exported model's outputs differ from PyTorch's."""


@dataclass(frozen=True)
class ModelFolder:
    """What `output_dir` holds, read from its JSON files alone (nothing loaded)."""

    kind: str  # causal-lm | seq2seq | sequence-classification | unet
    path: str  # the folder from_pretrained reads
    subfolder: str | None  # "unet" inside a diffusion pipeline
    class_name: str  # the architecture (transformers) or class (diffusers) saved there
    sidecars: tuple[tuple[str, str], ...]  # (file, name beside the export)


@dataclass(frozen=True)
class ExportRequest:
    model: ModelFolder
    format: str
    onnx_exporter: str | None
    output: str
    overwrite: bool
    atol: float


# -- what the folder holds ------------------------------------------------------------------------------------------
def inspect_model_folder(path: str) -> ModelFolder:
    """The model `path` holds, from its JSON files; a one-line `ConfigError` for anything that is not one."""
    if not os.path.isdir(path):
        raise ConfigError(f"output_dir {path}: no such folder; expected a recipe's output folder")
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return _pipeline_unet(path)
    config_path = os.path.join(path, "config.json")
    if os.path.isfile(os.path.join(path, "adapter_config.json")) and not os.path.isfile(config_path):
        raise ConfigError(_adapter_refusal(path))
    if not os.path.isfile(config_path):
        raise ConfigError(
            f"output_dir {path}: not a model folder (no config.json, model_index.json or adapter_config.json); "
            f"expected {_ALLOWED_MODELS}"
        )
    config = _read_json(config_path)
    if config.get("_class_name"):  # diffusers writes the class here, transformers writes `architectures`
        return _unet(path, None, config, ())
    return _transformers_model(path, config)


def _adapter_refusal(path: str) -> str:
    """A LoRA folder holds only the adapter; exporting it would mean re-merging into a base model hftrain would
    have to fetch, so the merged model the run wrote (or could write) is named instead."""
    merged = os.path.join(path, "merged")
    if os.path.isfile(os.path.join(merged, "config.json")):
        return f"output_dir {path}: holds a LoRA adapter, not a model; export its merged model: {merged}"
    return (
        f"output_dir {path}: holds a LoRA adapter, not a model, and no merged/ model; train with "
        f"--merge_adapter true (it writes {merged}) and export that"
    )


def _transformers_model(path: str, config: dict) -> ModelFolder:
    architecture = (config.get("architectures") or ["(no architectures in config.json)"])[0]
    kind = next((k for ending, k in _HEADS if architecture.endswith(ending)), None)
    if kind is None and architecture.endswith(_SEQ2SEQ_HEADS) and config.get("is_encoder_decoder"):
        kind = "seq2seq"
    if kind is None:
        raise ConfigError(f"output_dir {path}: holds {architecture}; hftrain export takes {_ALLOWED_MODELS}")
    quantization = config.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "quantized") if isinstance(quantization, dict) else "quantized"
        raise ConfigError(
            f"output_dir {path}: holds a {method} quantized model; ONNX and TorchScript cannot hold its "
            "quantized layers; export a model saved in full or half precision"
        )
    _require_weights(path, _WEIGHTS)
    sidecars = tuple(
        (os.path.join(path, name), name) for name in _SIDECARS if os.path.isfile(os.path.join(path, name))
    )
    return ModelFolder(kind, path, None, architecture, sidecars)


def _pipeline_unet(path: str) -> ModelFolder:
    unet_config = os.path.join(path, "unet", "config.json")
    if not os.path.isfile(unet_config):
        raise ConfigError(f"output_dir {path}: a diffusion pipeline without unet/config.json; nothing to export")
    scheduler = os.path.join(path, "scheduler", "scheduler_config.json")
    extra = ((scheduler, "scheduler_config.json"),) if os.path.isfile(scheduler) else ()
    return _unet(path, "unet", _read_json(unet_config), extra)


def _unet(path: str, subfolder: str | None, config: dict, extra: tuple) -> ModelFolder:
    folder = os.path.join(path, subfolder) if subfolder else path
    class_name = config.get("_class_name")
    if class_name not in _UNETS:
        raise ConfigError(f"output_dir {path}: holds a diffusers {class_name}; hftrain export takes {_ALLOWED_MODELS}")
    _require_weights(folder, _UNET_WEIGHTS)
    return ModelFolder(
        "unet", path, subfolder, class_name, ((os.path.join(folder, "config.json"), "config.json"), *extra)
    )


def _require_weights(folder: str, names: tuple[str, ...]) -> None:
    if not any(os.path.isfile(os.path.join(folder, name)) for name in names):
        raise ModelLoadError(f"output_dir {folder}: config.json but no weights (expected one of {', '.join(names)})")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"output_dir: cannot read {path}: {exc}") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"output_dir: {path} is not a JSON object")
    return value
