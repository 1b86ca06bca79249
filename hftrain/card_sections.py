"""The parts of hftrain's model card that describe facts of a run: where the weights started (`Origin`), how the
numbers read (`display`), what training took (`training_facts`), where it ran (`environment_facts`), what the
model is for (`intended_use`, `limitations`) and how to load it (`usage_snippets`). `hftrain.model_card`
assembles them.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

__all__ = [
    "Origin",
    "origin_of",
    "display",
    "table",
    "training_facts",
    "environment_facts",
    "intended_use",
    "limitations",
    "usage_snippets",
]

HFTRAIN_LICENSE = "apache-2.0"  # the license of hftrain, whose code builds and initialises the embedded models

# What each recipe trains a model to do, for the card's intended-use section.
PURPOSE = {
    "sft": "answer prompts the way the training conversations or completions do",
    "dpo": "answer prompts, preferring responses like the chosen ones of its preference data",
    "kto": "answer prompts, preferring responses its data marks desirable",
    "grpo": "answer prompts so that its reward functions score the answers highly",
    "reward": "score a prompt and response (higher means preferred), to rank responses or as a reward in RL",
    "seq2seq": "turn source text into target text, as in its training pairs",
    "pretrain": "continue text like its training corpus (a base language model: no instruction or safety tuning)",
    "diffusion": "generate images like those of its training set",
}


@dataclass
class Origin:
    """Where the trained weights started: a Hub model (`hub_id`, the card's `base_model`), a local folder
    (`local_path`, with the hftrain run that wrote it in `parent` and that run's own base in `hub_id`), hftrain's
    embedded model built in code from a seed (`builtin`), or only an architecture, randomly initialised
    (`from_config`). `license` is the base's, when known."""

    hub_id: Optional[str] = None
    local_path: Optional[str] = None
    parent: Optional[dict] = None
    license: Optional[str] = None
    builtin: bool = False
    from_config: Optional[str] = None

    def describe(self) -> str:
        """One phrase for the card's first sentence."""
        if self.builtin:
            return "hftrain's embedded tiny model (built in code, randomly initialised from a fixed seed)"
        if self.from_config:
            return f"the architecture of `{self.from_config}`, randomly initialised (its weights were not loaded)"
        if self.local_path:
            text = f"the local model `{self.local_path}`"
            if self.parent:
                text += f", the output of hftrain run `{self.parent['uuid'][:8]}` ({_run_name(self.parent)})"
            return text + (
                f", itself from [{self.hub_id}](https://huggingface.co/{self.hub_id})" if self.hub_id else ""
            )
        return f"[{self.hub_id}](https://huggingface.co/{self.hub_id})"


def _run_name(parent: dict) -> str:
    return f"`{parent.get('name') or '?'}`, experiment `{parent.get('experiment') or '?'}`"


def origin_of(name_or_path: Optional[str], recipe: str, parent: Optional[dict], revision: Optional[str]) -> Origin:
    """The `Origin` of a run that loaded `name_or_path` (None: the embedded model); the pretrain recipe only
    takes an architecture from it. A local folder's card (an hftrain card names its own base) gives the base model
    and license; a Hub model's card (from the local cache, or fetched) gives the license."""
    if not name_or_path:
        return Origin(builtin=True, license=HFTRAIN_LICENSE)
    if recipe == "pretrain":
        return Origin(from_config=name_or_path)
    if os.path.isdir(name_or_path):
        from .tracking.lineage import run_folder

        card = _card_metadata(os.path.join(name_or_path, "README.md")) or _card_metadata(
            os.path.join(run_folder(name_or_path), "README.md")
        )
        by_hftrain = "hftrain" in (card.get("tags") or [])  # another tool's card may name its own base instead
        base = card.get("base_model") if by_hftrain else None
        return Origin(hub_id=base, local_path=name_or_path, parent=parent, license=card.get("license"))
    return Origin(hub_id=name_or_path, license=_hub_card(name_or_path, revision).get("license"))


def _card_metadata(path: str) -> dict:
    from huggingface_hub import metadata_load

    try:
        return (metadata_load(path) or {}) if os.path.isfile(path) else {}
    except Exception:  # an unreadable card only costs the license and base
        return {}


def _hub_card(repo_id: str, revision: Optional[str]) -> dict:
    """The Hub model's card metadata: from the local cache when `HF_HUB_OFFLINE=1`, else fetched; {} if neither."""
    from huggingface_hub import hf_hub_download

    try:
        return _card_metadata(hf_hub_download(repo_id, "README.md", revision=revision))
    except Exception:  # offline, gated, no card: the card says the license is unknown
        return {}


# -- how values read -----------------------------------------------------------------------------------------------
def display(value: Any) -> str:
    """A value as a reader wants it: an enum's value (`cosine`, not `SchedulerType.COSINE`), floats to 4
    significant digits, lists comma-separated, callables by name."""
    if isinstance(value, enum.Enum):
        return display(value.value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(display(v) for v in value) or "none"
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    return str(value)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A markdown table; cells through `display` (pipes escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(display(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _size(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return str(count)


def _rows(dataset: Any) -> str:
    try:
        return f"{len(dataset):,}"
    except TypeError:  # an IterableDataset (streaming) has no length
        return "streamed (not counted)"


def training_facts(trainer: Any) -> list[list[Any]]:
    """Rows of what training took: steps, epochs actually trained, examples, parameters, time, precision."""
    state, args = trainer.state, trainer.args
    rows: list[list[Any]] = [["optimizer steps", f"{state.global_step:,}"]]
    if state.epoch is not None:
        rows.append(["epochs trained", f"{state.epoch:.3g}"])
    rows.append(["training examples", _rows(trainer.train_dataset)])
    if getattr(trainer, "eval_dataset", None) is not None:
        rows.append(["evaluation examples", _rows(trainer.eval_dataset)])
    model = getattr(trainer, "model", None)
    if model is not None and hasattr(model, "parameters"):
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append(
            ["parameters", f"{_size(total)} ({_size(trainable)} trained)" if trainable < total else _size(total)]
        )
    runtime = next((e["train_runtime"] for e in reversed(state.log_history) if "train_runtime" in e), None)
    if runtime is not None:
        rows.append(["training time", f"{_duration(runtime)} (wall clock of the last `train()` call)"])
    precision = (
        "bf16 mixed" if getattr(args, "bf16", False) else "fp16 mixed" if getattr(args, "fp16", False) else "fp32"
    )
    rows.append(["precision", precision])
    return rows


def environment_facts(processes: int) -> list[list[Any]]:
    """Rows of where the run ran: processes, GPUs or CPU, library versions (the tracker's system record)."""
    from .tracking.sysinfo import system_info

    system = system_info()
    gpus = system.get("gpus") or []
    if gpus:
        names = sorted({f"{g['name']} ({g['memory_bytes'] / 2**30:.0f} GiB)" for g in gpus})
        hardware = f"{len(gpus)} x " + ", ".join(names)
    else:
        hardware = f"CPU only: {system.get('cpu') or 'unknown CPU'} ({system.get('cpu_count')} cores)"
    libraries = ", ".join(f"{name} {v}" for name, v in (system.get("libraries") or {}).items() if v)
    return [["processes", processes], ["hardware", hardware], ["libraries", libraries], ["Python", system["python"]]]


# -- what it is for ------------------------------------------------------------------------------------------------
def intended_use(recipe: str, origin: Origin, dataset: str, bundled_data: bool) -> str:
    """The card's intended-use paragraph."""
    purpose = PURPOSE.get(recipe, "the task of its training data")
    if origin.builtin and bundled_data:
        return (
            f"A demonstration of hftrain's `{recipe}` recipe: a tiny model trained from scratch to {purpose}, on "
            f"hftrain's bundled `{dataset}` data. It shows the recipe end to end on a laptop CPU; it is not meant "
            "for any real task."
        )
    return (
        f"Trained to {purpose}, on `{dataset}`. Use it for that task on data like its training data, after "
        "evaluating it on your own held-out examples."
    )


def limitations(recipe: str, origin: Origin, eval_rows: Optional[str]) -> list[str]:
    """Bullet points for the card's limitations section."""
    points = [
        "Evaluated only on the evaluation data behind the results below"
        + (f" ({eval_rows} examples)" if eval_rows else "")
        + "; its scores on other data may differ."
    ]
    if origin.builtin:
        points.append("Tiny and trained only on the bundled task: outside it, its output is noise.")
    elif origin.hub_id:
        points.append(f"It inherits the limitations and biases of its base model, {origin.hub_id}, and of its data.")
    else:
        points.append("It inherits the limitations and biases of the model it started from and of its data.")
    if recipe == "grpo":
        points.append("Optimised against reward functions, it may exploit them; the task metrics are measured apart.")
    if recipe in ("pretrain", "reward", "diffusion"):
        points.append("No safety tuning: filter its output before showing it to people.")
    else:
        points.append("Not tuned for safety beyond what its base and data give it.")
    return points


# -- how to load it ------------------------------------------------------------------------------------------------
_AUTO = {
    "text-generation": "CausalLM",
    "text2text-generation": "Seq2SeqLM",
    "text-classification": "SequenceClassification",
}


def _builtin_base(task: str, model_args: Any) -> str:
    """The call that rebuilds the embedded base exactly as the recipes build it (`hftrain.recipe_utils`): same
    sizes, same seed, so the same weights."""
    hidden, layers = model_args.tiny_hidden_size, model_args.tiny_num_layers
    if task == "text2text-generation":
        return f"build_tiny_seq2seq(tokenizer, d_model={min(64, hidden)}, num_layers={layers})"
    builder = "build_tiny_reward_model" if task == "text-classification" else "build_tiny_causal_lm"
    return f"{builder}(tokenizer, hidden_size={hidden}, num_layers={layers}, num_heads={max(1, hidden // 32)})"


def usage_snippets(
    task: str, where: str, *, adapter: bool, origin: Origin, model_args: Any, merged: bool, on_hub: bool
) -> list[tuple[str, str]]:
    """(title, Python code) pairs that load this output from `where` (a Hub repo when `on_hub`, else a folder):
    the full model, or the adapter (on a named base, or on the embedded base rebuilt from its seed), and the merged
    model in `merged/` when the run wrote one."""
    auto = f"AutoModelFor{_AUTO.get(task, 'CausalLM')}"
    if not adapter:
        code = (
            f"from transformers import {auto}, AutoTokenizer\n\n"
            f"model = {auto}.from_pretrained({where!r})\ntokenizer = AutoTokenizer.from_pretrained({where!r})"
        )
        return [("The model", code)]
    if origin.builtin:
        builder = _builtin_base(task, model_args)
        code = (
            f"from peft import PeftModel\nfrom transformers import AutoTokenizer\n\n"
            f"from hftrain.builtin import {builder.split('(')[0]}\n\n"
            f"tokenizer = AutoTokenizer.from_pretrained({where!r})\n"
            "# the embedded base is built in code, never saved: rebuilt from the same sizes and seed\n"
            f"base = {builder}\nmodel = PeftModel.from_pretrained(base, {where!r})"
        )
    elif origin.from_config:
        code = (
            "# the base was randomly initialised and not saved, so this adapter cannot be applied to it again;\n"
            "# train with --merge_adapter true to get a loadable full model in merged/"
        )
    else:
        code = (
            f"from peft import AutoPeftModelFor{_AUTO.get(task, 'CausalLM')}\nfrom transformers import AutoTokenizer\n\n"
            f"# loads the base named in adapter_config.json, then applies the adapter\n"
            f"model = AutoPeftModelFor{_AUTO.get(task, 'CausalLM')}.from_pretrained({where!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({where!r})"
        )
    snippets = [("The LoRA adapter", code)]
    if merged:
        title = "The merged model in `merged/` (the adapter folded into its base: no peft needed)"
        snippets.append((title, _merged_snippet(auto, where, on_hub)))
    return snippets


def _merged_snippet(auto: str, where: str, on_hub: bool) -> str:
    """Loading code for `merged/`. Not `from_pretrained(repo, subfolder="merged")`: transformers' Auto classes look
    for an adapter at the top of the repo without the subfolder, find this one, and load its base instead."""
    if on_hub:
        fetch = "from huggingface_hub import snapshot_download\n"
        path = f"merged = snapshot_download({where!r}, allow_patterns=['merged/*']) + '/merged'\n"
    else:
        fetch, path = "", f"merged = {os.path.join(where, 'merged')!r}\n"
    return (
        f"{fetch}from transformers import {auto}, AutoTokenizer\n\n{path}"
        f"model = {auto}.from_pretrained(merged)\ntokenizer = AutoTokenizer.from_pretrained(merged)"
    )
