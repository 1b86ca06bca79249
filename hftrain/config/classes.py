"""hftrain's arguments classes: upstream's class plus `HFTrainArguments`, upstream's positional order kept.

`HFTrainArguments` comes first among the bases so that its keyword-only fields follow upstream's in
`dataclasses.fields`; `__init__` takes upstream's fields positionally in upstream's order and hftrain's by keyword
only. Construction validates hftrain's fields (pure checks) and then runs upstream's `__post_init__`.

TRL's configs live in `hftrain.config.trl` so that plain `Trainer` users never pay TRL's import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import transformers

from ..errors import ConfigError
from .groups import HFTrainArguments

__all__ = ["ModelArguments", "ScriptArguments", "Seq2SeqTrainingArguments", "TrainingArguments"]


@dataclass
class TrainingArguments(HFTrainArguments, transformers.TrainingArguments):
    """`transformers.TrainingArguments` plus hftrain's fields (keyword-only)."""

    def __post_init__(self):
        self.remember_given_values()
        self.validate_hftrain()
        super().__post_init__()


@dataclass
class Seq2SeqTrainingArguments(HFTrainArguments, transformers.Seq2SeqTrainingArguments):
    """`transformers.Seq2SeqTrainingArguments` plus hftrain's fields (keyword-only)."""

    def __post_init__(self):
        self.remember_given_values()
        self.validate_hftrain()
        super().__post_init__()


@dataclass
class ModelArguments:
    """Which model to train and how to load it (recipes)."""

    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "A Hub model id (e.g. `Qwen/Qwen2.5-0.5B`) or a local directory. Empty: the recipe's embedded "
            "tiny default, built in code with no download."
        },
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the Hub model."})
    dtype: Optional[str] = field(
        default=None,
        metadata={
            "help": "Weights dtype when loading: `auto`, `float32`, `bfloat16` or `float16`. None keeps the "
            "checkpoint's float32 default.",
            "choices": ["auto", "float32", "bfloat16", "float16"],
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    attn_implementation: Optional[str] = field(
        default=None, metadata={"help": "Attention kernel, e.g. `sdpa`, `eager`, `flash_attention_2`."}
    )
    tiny_hidden_size: int = field(
        default=128, metadata={"help": "Hidden size of the embedded default model (used when no model is named)."}
    )
    tiny_num_layers: int = field(
        default=2, metadata={"help": "Layers of the embedded default model (used when no model is named)."}
    )
    # LoRA / QLoRA (hftrain.peft_utils: peft's LoraConfig, transformers' BitsAndBytesConfig)
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path (0 to 1)."})
    lora_target_modules: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Module names that get adapters, e.g. q_proj v_proj. Empty: all linear layers (peft's "
            "`all-linear`). A name the model lacks is an error that lists the names it has."
        },
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: load the base weights in 4 bit (bitsandbytes, GPU)."}
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the base weights in 8 bit (bitsandbytes, GPU)."})
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit quantisation type.", "choices": ["nf4", "fp4"]}
    )
    bnb_4bit_compute_dtype: str = field(
        default="bfloat16",
        metadata={"help": "Compute dtype of 4-bit layers.", "choices": ["bfloat16", "float16", "float32"]},
    )
    use_bnb_nested_quant: bool = field(default=False, metadata={"help": "Double quantisation of 4-bit weights."})
    merge_adapter: bool = field(
        default=False,
        metadata={
            "help": "After training, merge the LoRA adapter into the base weights (`merge_and_unload`) and "
            "save the full model to `output_dir/merged`."
        },
    )

    def __post_init__(self):
        for name in ("tiny_hidden_size", "tiny_num_layers", "lora_r", "lora_alpha"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.tiny_hidden_size % 8:
            raise ConfigError(
                f"tiny_hidden_size: expected a multiple of 8 (heads of size 8+), got {self.tiny_hidden_size}"
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout: expected a probability in [0, 1), got {self.lora_dropout}")
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("load_in_4bit and load_in_8bit: choose one of them, not both")
        if self.load_in_4bit or self.load_in_8bit:
            flag = "load_in_4bit" if self.load_in_4bit else "load_in_8bit"
            if not self.use_peft:
                raise ConfigError(f"{flag}: quantized weights cannot be trained directly; add --use_peft (QLoRA)")
            if not self.model_name_or_path:
                raise ConfigError(
                    f"{flag}: needs --model_name_or_path (the embedded default is built in memory and "
                    "cannot be loaded quantized)"
                )
        if self.merge_adapter and not self.use_peft:
            raise ConfigError("merge_adapter: only meaningful with --use_peft (there is no adapter to merge)")


@dataclass
class ScriptArguments:
    """Which data a recipe trains on."""

    dataset_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "A Hub dataset id, a local directory saved with `save_to_disk`, or a data file (.json, .jsonl, "
            ".csv, .parquet). Empty: the recipe's bundled dataset, generated in code."
        },
    )
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Dataset configuration name on the Hub."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split to evaluate on. If missing, a share of train is held out."}
    )
    eval_holdout: float = field(
        default=0.05,
        metadata={"help": "Share of train held out for evaluation when the dataset has no test split (0 to 0.5)."},
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep only the first N training rows (quick experiments)."}
    )
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Keep only the first N eval rows."})
    bundled_train_size: int = field(
        default=4000, metadata={"help": "Rows of the bundled dataset to generate when `dataset_name` is empty."}
    )
    bundled_eval_size: int = field(
        default=200, metadata={"help": "Held-out rows of the bundled dataset (generated with a different seed)."}
    )
    # A list of mappings in YAML; one JSON string on the command line (argparse takes one value per flag).
    datasets: Union[list[dict], str, None] = field(
        default=None,
        metadata={
            "help": "A mixture instead of `dataset_name`: a list of datasets, each {path, name, split, columns, rows "
            "or fraction, weight, test_split} (README: Dataset mixtures). In YAML a list; on the command line the "
            'same list as JSON, e.g. \'[{"path": "a.jsonl", "weight": 3}, {"path": "b.jsonl", "weight": 1}]\'.'
        },
    )

    def __post_init__(self):
        if not 0.0 <= self.eval_holdout <= 0.5:
            raise ConfigError(f"eval_holdout: expected a share between 0 and 0.5, got {self.eval_holdout}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name}: expected a positive number of rows, got {value}")
        for name in ("bundled_train_size", "bundled_eval_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: expected a positive number of rows, got {getattr(self, name)}")
        if self.datasets is not None:
            self._parse_mixture()

    def _parse_mixture(self) -> None:
        """`datasets` becomes its parsed entries, and `dataset_name` its label: recipes that tell a named dataset
        from their bundled default by `dataset_name` (and the model card) then see the mixture."""
        from .mixture import mixture_label, parse_mixture

        entries = parse_mixture(self.datasets)
        label = mixture_label(entries)
        if self.dataset_name and self.dataset_name != label:  # the label itself: these arguments built again
            raise ConfigError(
                f"datasets: a mixture replaces dataset_name ({self.dataset_name!r}); remove dataset_name (over a YAML "
                "file that sets it: --dataset_name ''), or list that dataset as an entry of datasets"
            )
        self.datasets, self.dataset_name = list(entries), label
