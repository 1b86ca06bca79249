"""Results out: the model card hftrain writes after training, the run history, and the push to the Hub.

TRL rewrites README.md at every checkpoint with a template that has no eval results (UPSTREAM_NOTES §8), and the
Trainer's own push happens per checkpoint. So a recipe given `--push_to_hub` turns the trainer's pushing off
(`prepare_push`), and after training writes its own card (`write_model_card`: base model, datasets, the arguments
that matter, the final and best-checkpoint metrics, `model-index` results, curriculum, the run history) and pushes
the output directory once (`push_results`). A failed push leaves everything on disk and says how to retry:
`hftrain push OUTPUT_DIR`.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
from typing import Any, Optional, Sequence

from .errors import ConfigError, HFTrainError
from .host import BatchGeometry

__all__ = [
    "check_push_settings",
    "prepare_push",
    "resolve_token",
    "export_run_history",
    "final_and_best_metrics",
    "write_model_card",
    "files_to_push",
    "push_results",
    "PUSH_RECORD",
]

PUSH_RECORD = "hftrain_push.json"  # repo id and options of the push, so `hftrain push OUTPUT_DIR` can retry
# Never uploaded: checkpoints (the final model is at the top level), private files, TensorBoard event files.
EXCLUDE = ("checkpoint-*", "_*", ".*", "runs", PUSH_RECORD, "*.lock")
# Eval keys that describe the evaluation run, not the model.
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "num_tokens", "samples_file")


def resolve_token(explicit: Optional[str] = None) -> Optional[str]:
    """The Hub token: the explicit one, else `HF_TOKEN` / the token `hf auth login` stored."""
    if explicit:
        return explicit
    from huggingface_hub import get_token

    return get_token()


def check_push_settings(args: Any) -> None:
    """With `push_to_hub`, refuse a missing repo id or token at start (nothing trained, nothing written)."""
    if not getattr(args, "push_to_hub", False):
        return
    if not getattr(args, "hub_model_id", None):
        raise ConfigError("push_to_hub: needs --hub_model_id USER_OR_ORG/NAME (the Hub repo to push the results to)")
    if not resolve_token(getattr(args, "hub_token", None)):
        raise ConfigError(
            "push_to_hub: no Hub token; set HF_TOKEN, run `hf auth login`, or pass --hub_token "
            "(the variable is safer: arguments are saved with every checkpoint)"
        )


def prepare_push(training_args: Any) -> Optional[dict]:
    """The push target of a run, or None; turns the trainer's own per-checkpoint pushes and TRL's card off."""
    if not training_args.push_to_hub:
        return None
    target = {
        "repo_id": training_args.hub_model_id,
        "private": training_args.hub_private_repo,
        "revision": getattr(training_args, "hub_revision", None),
        "token": training_args.hub_token,
    }
    training_args.push_to_hub = False  # hftrain pushes once, after its card is written
    return target


# -- run history ---------------------------------------------------------------------------------------------
def export_run_history(trainer: Any, output_dir: str) -> Optional[str]:
    """Copy the tracker's record of this run (run.json, history.csv) into `output_dir/run_history`; returns the
    folder, or None when the run was not tracked. Falls back to the trainer's `log_history` without a tracker."""
    folder = os.path.join(output_dir, "run_history")
    run, points = None, None
    try:
        from .tracking.callback import find_tracker
        from .tracking.store import TrackerStore

        tracker = find_tracker(trainer)
        if tracker is not None and tracker.run_id is not None:
            with TrackerStore(tracker.db_path, create=False) as store:
                run, points = store.run_details(tracker.run_id), store.history(tracker.run_id)
    except (ImportError, HFTrainError, OSError):
        run = None  # a tracker problem must not cost the card; log_history below still records the curves
    if run is None:
        points = [
            {"key": k, "step": e.get("step"), "value": v, "epoch": e.get("epoch"), "wall_time": None}
            for e in trainer.state.log_history
            for k, v in e.items()
            if k not in ("step", "epoch") and isinstance(v, (int, float))
        ]
        run = {"source": "trainer_state.log_history (the run was not tracked)"}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "run.json"), "w", encoding="utf-8") as handle:
        json.dump(run, handle, indent=1, default=str)
    with open(os.path.join(folder, "history.csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "step", "value", "epoch", "wall_time"])
        writer.writerows([p["key"], p["step"], p["value"], p["epoch"], p["wall_time"]] for p in points)
    return folder


# -- model card ----------------------------------------------------------------------------------------------
def _metric_items(logs: dict) -> dict[str, float]:
    return {
        k[len("eval_") :] if k.startswith("eval_") else k: float(v)
        for k, v in logs.items()
        if k.startswith("eval_")
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and not any(k.endswith(s) for s in _NOT_METRICS)
    }


def final_and_best_metrics(state: Any, final: Optional[dict]) -> tuple[dict, dict, Optional[int]]:
    """(final eval metrics, best checkpoint's eval metrics, best step). Best: `best_model_checkpoint` when the
    run tracked one, else the evaluation with the lowest loss."""
    evals = [e for e in state.log_history if "eval_loss" in e]
    best_step = None
    if getattr(state, "best_model_checkpoint", None):
        best_step = int(state.best_model_checkpoint.rstrip("/").rsplit("-", 1)[-1])
    elif evals:
        best_step = min(evals, key=lambda e: e["eval_loss"])["step"]
    best = next((e for e in evals if e.get("step") == best_step), {})
    final_logs = final if final is not None else (evals[-1] if evals else {})
    return _metric_items(final_logs), _metric_items(best), best_step


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _settings(training_args: Any, model_args: Any) -> dict[str, Any]:
    keys = [
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "global_batch_size",
        "optimization_level",
        "optim",
        "bf16",
        "seed",
        "max_length",
        "beta",
        "loss_type",
        "packing",
        "eval_metrics",
    ]
    values = {k: getattr(training_args, k) for k in keys if getattr(training_args, k, None) not in (None, [], "")}
    geometry = BatchGeometry.from_args(training_args)
    values["world_size"], values["effective_batch_size"] = geometry.processes, geometry.global_batch
    if model_args is not None and getattr(model_args, "use_peft", False):
        for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "load_in_4bit", "load_in_8bit"):
            values[k] = getattr(model_args, k)
    return values


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

Trained with the hftrain `{{ recipe }}` recipe, from {{ source }}, on {{ dataset }}. {{ kind }}

## Results

Final evaluation (step {{ final_step }}):

{{ final_table }}

Best checkpoint{% if best_step is not none %} (step {{ best_step }}){% endif %}:

{{ best_table }}

## Training settings

{{ settings_table }}

{% if rewards %}## Rewards and task metrics

{{ rewards }}

{% endif %}## Curriculum

{{ curriculum }}

## Run history

{{ history }}

## How to use

```python
{{ usage }}
```
"""


def write_model_card(
    trainer: Any,
    output_dir: str,
    *,
    recipe: str,
    dataset: str,
    task: str,
    model_args: Any = None,
    final_metrics: Optional[dict] = None,
    history_dir: Optional[str] = None,
    repo_id: Optional[str] = None,
) -> str:
    """Write hftrain's model card to `output_dir/README.md` (after training, replacing TRL's); returns its path."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    args = trainer.args
    base_model = getattr(model_args, "model_name_or_path", None) if model_args is not None else None
    source = (
        f"[{base_model}](https://huggingface.co/{base_model})"
        if base_model
        else "a model built from its config (random initialisation)"
    )
    if base_model and os.path.isdir(base_model):
        source, base_model = f"the local model `{base_model}`", None  # a directory is not a Hub id
    model_name = repo_id or os.path.basename(os.path.abspath(output_dir))
    final, best, best_step = final_and_best_metrics(trainer.state, final_metrics)
    is_peft = hasattr(trainer.model, "peft_config")
    dataset_id = dataset if "/" in dataset and not os.path.exists(dataset) else f"hftrain-bundled/{dataset}"
    eval_results = [
        EvalResult(
            task_type=task,
            dataset_type=dataset_id,
            dataset_name=dataset,
            dataset_split="eval",
            metric_type=name,
            metric_name=name,
            metric_value=value,
        )
        for name, value in final.items()
    ]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[dataset_id],
        library_name="peft" if is_peft else "transformers",
        pipeline_tag=task,
        tags=["hftrain", recipe, *(["lora"] if is_peft else [])],
        eval_results=eval_results or None,
    )
    curriculum = getattr(args, "curriculum", None)
    curriculum_text = (
        "None (random order)."
        if not curriculum
        else _table(
            [
                [k, getattr(args, k)]
                for k in (
                    "curriculum",
                    "curriculum_column",
                    "curriculum_pacing",
                    "curriculum_start",
                    "curriculum_full_at",
                    "curriculum_reverse",
                    "curriculum_stages",
                )
                if hasattr(args, k)
            ],
            ["setting", "value"],
        )
    )
    history = "Not exported."
    if history_dir:
        rel = os.path.relpath(history_dir, output_dir)
        history = (
            f"The full history of this run, as the hftrain tracker recorded it, is in [`{rel}/history.csv`]"
            f"({rel}/history.csv) (every logged value by step) and [`{rel}/run.json`]({rel}/run.json) "
            "(parameters, system, git state, metric summary)."
        )
    loader = (
        "transformers import AutoModelForSequenceClassification as Auto"
        if task == "text-classification"
        else "peft import AutoPeftModelForCausalLM as Auto"
        if is_peft and task == "text-generation"
        else "transformers import AutoModelForSeq2SeqLM as Auto"
        if task == "text2text-generation"
        else "transformers import AutoModelForCausalLM as Auto"
    )
    where = repo_id or output_dir
    usage = (
        f"from {loader}\nfrom transformers import AutoTokenizer\n\nmodel = Auto.from_pretrained({where!r})\n"
        f"tokenizer = AutoTokenizer.from_pretrained({where!r})"
    )
    card = ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        model_name=model_name,
        recipe=recipe,
        source=source,
        dataset=dataset,
        kind="A LoRA adapter (peft)." if is_peft else "Full weights.",
        final_step=trainer.state.global_step,
        final_table=_table([[k, _fmt(v)] for k, v in final.items()], ["metric", "value"])
        if final
        else "No evaluation.",
        best_table=_table([[k, _fmt(v)] for k, v in best.items()], ["metric", "value"])
        if best
        else "No evaluation during training.",
        best_step=best_step,
        settings_table=_table([[k, _fmt(v)] for k, v in _settings(args, model_args).items()], ["argument", "value"]),
        rewards=_rewards_text(trainer),
        curriculum=curriculum_text,
        history=history,
        usage=usage,
    )
    path = os.path.join(output_dir, "README.md")
    card.save(path)
    return path


def _rewards_text(trainer: Any) -> str:
    """RL runs (GRPO, RLOO): the reward functions with their weights, and the task metrics measured apart from
    them (greedy completions against `eval_reference_column`) that the reward-hacking check compares. Else ''."""
    names = list(getattr(trainer, "reward_func_names", None) or [])
    if not names:
        return ""
    args = trainer.args
    weights = getattr(args, "reward_weights", None) or [1.0] * len(names)
    rows = [[f"reward: `{name}`", _fmt(weight)] for name, weight in zip(names, weights)]
    metrics = [m if isinstance(m, str) else getattr(m, "__name__", repr(m)) for m in getattr(args, "eval_metrics", [])]
    task = getattr(args, "monitor_task_metric", None) or args.metric_for_best_model or "the first generation metric"
    rows += [
        ["task metrics (eval, independent of the rewards)", ", ".join(f"`{m}`" for m in metrics) or "none"],
        ["reference column", f"`{getattr(args, 'eval_reference_column', 'answer')}`"],
        ["reward-hacking check: task metric", f"`{task}`"],
        ["reward-hacking check: evaluations", _fmt(getattr(args, "monitor_reward_hacking_evals", 0) or "off")],
    ]
    return _table(rows, ["reward function or metric", "weight / value"])


# -- push ----------------------------------------------------------------------------------------------------
def files_to_push(output_dir: str) -> list[str]:
    """The exact files (relative paths, sorted) a push of `output_dir` uploads."""
    chosen = []
    for root, dirs, names in os.walk(output_dir):
        rel_root = os.path.relpath(root, output_dir)
        dirs[:] = sorted(d for d in dirs if not any(fnmatch.fnmatch(d, p) for p in EXCLUDE))
        for name in names:
            if not any(fnmatch.fnmatch(name, p) for p in EXCLUDE):
                chosen.append(os.path.normpath(os.path.join(rel_root, name)))
    return sorted(chosen)


def _record_push(output_dir: str, target: dict) -> None:
    # The token is never written: arguments and records are often shared.
    record = {k: v for k, v in target.items() if k != "token"}
    with open(os.path.join(output_dir, PUSH_RECORD), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)


def push_results(
    output_dir: str,
    repo_id: Optional[str] = None,
    token: Optional[str] = None,
    private: Optional[bool] = None,
    revision: Optional[str] = None,
    commit_message: str = "hftrain: results of training",
) -> str:
    """Upload `files_to_push(output_dir)` to `repo_id` (created if needed); returns the repo URL.

    `repo_id`/`private`/`revision` default to what the run recorded in `hftrain_push.json`. Any failure raises an
    `HFTrainError` that says the local results are intact and how to retry.
    """
    from huggingface_hub import HfApi

    if not os.path.isdir(output_dir):
        raise ConfigError(f"push: no such output directory: {output_dir}")
    record_path = os.path.join(output_dir, PUSH_RECORD)
    record = json.load(open(record_path, encoding="utf-8")) if os.path.isfile(record_path) else {}
    repo_id = repo_id or record.get("repo_id")
    private = record.get("private") if private is None else private
    revision = revision or record.get("revision")
    if not repo_id:
        raise ConfigError(f"push: no repo id; pass --repo_id USER_OR_ORG/NAME (no {PUSH_RECORD} in {output_dir})")
    token = resolve_token(token)
    if not token:
        raise ConfigError("push: no Hub token; set HF_TOKEN, run `hf auth login`, or pass --token")
    _record_push(output_dir, {"repo_id": repo_id, "private": private, "revision": revision})
    files = files_to_push(output_dir)
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=output_dir,
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            allow_patterns=files,
            commit_message=commit_message,
        )
    except Exception as exc:  # network, auth, quota: any of them must leave a clear way forward
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise HFTrainError(
            f"push to {repo_id} failed ({type(exc).__name__}: {first}); the results are safe in "
            f"{os.path.abspath(output_dir)}; retry with: hftrain push {output_dir}"
        ) from exc
    return str(url)
