"""LoRA and QLoRA from `ModelArguments`: peft's `LoraConfig` / `get_peft_model`, transformers'
`BitsAndBytesConfig`, and `merge_and_unload` at the end. Thin: hftrain only checks the settings early and names
what is wrong.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from .errors import ConfigError

__all__ = ["check_model_arguments", "quantization_config", "apply_lora", "merge_and_save", "linear_module_names"]


def _cuda_available() -> bool:
    from .machine import cuda_usable

    return cuda_usable()


def _bitsandbytes_installed() -> bool:
    from .machine import package_installed

    return package_installed("bitsandbytes")


# bitsandbytes is an optional extra: as a hard dependency it printed a kernels message on every CPU run.
QLORA_EXTRA = "pip install 'hftrain[qlora]'"


def check_model_arguments(model_args: Any) -> None:
    """Refuse k-bit loading without a CUDA GPU or without bitsandbytes (the `qlora` extra), before anything loads.

    The pure checks of these fields run when `ModelArguments` is built; this one looks at the machine, so it runs
    in `hftrain.launch.resolve_arguments`."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return
    flag = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
    gpu, package = _cuda_available(), _bitsandbytes_installed()
    if gpu and package:
        return
    needs = [] if gpu else ["a CUDA GPU (none is visible)"]
    needs += [] if package else [f"bitsandbytes (not installed: {QLORA_EXTRA})"]
    fallback = "" if gpu else " (plain LoRA with --use_peft runs on CPU)"
    raise ConfigError(f"{flag}: QLoRA/k-bit loading needs {' and '.join(needs)}; drop --{flag}{fallback}")


def quantization_config(model_args: Any):
    """`BitsAndBytesConfig` for `load_in_4bit`/`load_in_8bit`, else None."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=model_args.load_in_4bit,
        load_in_8bit=model_args.load_in_8bit,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_compute_dtype=getattr(torch, model_args.bnb_4bit_compute_dtype),
        bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
    )


def linear_module_names(model: Any) -> list[str]:
    """Short names of the model's linear layers (what `lora_target_modules` may name), sorted."""
    import torch

    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def apply_lora(model: Any, model_args: Any, task_type: str = "CAUSAL_LM", training_args: Any = None):
    """The model wrapped with a LoRA adapter when `use_peft` is set (after k-bit preparation for QLoRA);
    unchanged otherwise. A target module the model lacks is a `ConfigError` listing the ones it has."""
    if not model_args.use_peft:
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    available = linear_module_names(model)
    targets = list(model_args.lora_target_modules) or "all-linear"
    if isinstance(targets, list):
        missing = [t for t in targets if t not in available]
        if missing:
            raise ConfigError(
                f"lora_target_modules: {', '.join(missing)} not found in {type(model).__name__}; "
                f"its linear layers are: {', '.join(available)}"
            )
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        checkpointing = bool(training_args is not None and getattr(training_args, "gradient_checkpointing", False))
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        task_type=task_type,
    )
    return get_peft_model(model, config)


def merge_and_save(model: Any, tokenizer: Any, output_dir: str) -> Optional[str]:
    """Merge a peft adapter into its base (`merge_and_unload`) and save the full model and tokenizer to
    `output_dir/merged`; returns that directory, or None when `model` has no adapter."""
    if not hasattr(model, "merge_and_unload"):
        return None
    merged_dir = os.path.join(output_dir, "merged")
    merged = model.merge_and_unload()
    merged.save_pretrained(merged_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(merged_dir)
    return merged_dir
