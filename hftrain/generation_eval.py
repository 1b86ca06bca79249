"""Generation metrics, token-weighted perplexity and DPO preference metrics at every evaluation.

`GenerationEvaluator` is what `HFTrainMixin` delegates to when `eval_metrics` is set. At each `evaluate()` it
runs, after the trainer's own evaluation loop and before its metrics are logged:

* generation: prompts only, left-padded batches, `max_new_tokens` and decoding settings from `args`, on the first
  `eval_generation_samples` rows; each batch is decoded, fed to the streaming metrics and dropped;
* perplexity: one forward pass per batch over the whole prepared eval set, summing NLL and target tokens;
* DPO: TRL's own rewards of each batch (its DPO loss path, through `hftrain.host.TrainerHost.dpo_batch_rewards`), weighted by pairs, for preference
  accuracy, reward margin and implied KL.

Work is split into fixed batches (batch *i* holds rows `[i*B, (i+1)*B)`) and batch *i* goes to process
`i % world_size`. A batch has the same rows and padding on any number of processes, and the metric states add up
exactly (`hftrain.metrics`), so one and two processes give the same numbers. Nothing here touches the RNG
streams of training: it runs inside `torch.random.fork_rng`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from fractions import Fraction
from typing import Any, Iterator, Optional

import torch
from transformers.utils import logging

from .errors import ConfigError, DataError
from .host import host_of
from .metrics import MetricSuite, merge_states, perplexity, token_nll

logger = logging.get_logger(__name__)

__all__ = ["GenerationEvaluator", "example_from_row", "bound_argument"]

# Columns of a prepared (tokenised) dataset that the trainers' collators read.
_MODEL_COLUMNS = (
    "input_ids", "attention_mask", "labels", "completion_mask", "assistant_masks", "token_type_ids",
    "decoder_input_ids", "decoder_attention_mask", "position_ids", "seq_lengths",
    "prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps",
)  # fmt: skip


def bound_argument(function: Any, args: tuple, kwargs: dict, name: str) -> Any:
    """The value `name` takes when `function(*args, **kwargs)` is called (None if absent or not bindable)."""
    try:
        return inspect.signature(function).bind_partial(*args, **kwargs).arguments.get(name)
    except TypeError:
        return kwargs.get(name)


def _tokenizer_of(processing_class: Any) -> Any:
    return getattr(processing_class, "tokenizer", processing_class)


def _message_text(value: Any) -> str:
    if isinstance(value, list):  # conversational completion: the assistant turn(s)
        return "".join(m.get("content", "") for m in value if isinstance(m, dict) and m.get("role") == "assistant")
    return str(value)


def example_from_row(row: dict, tokenizer: Any, settings: Any, encoder_decoder: bool) -> tuple[list[int], str, str]:
    """(prompt token ids, prompt text, reference text) for one eval row, in any supported layout.

    Layouts: `prompt` + `completion` (SFT) or `prompt` + `chosen` (DPO), as strings or message lists;
    `messages` (the last assistant turn is the reference); `text` split at `eval_response_template`;
    `source` + `target`; or tokenised `input_ids` + `labels` (labels != -100 are the reference).
    """
    if "prompt" in row and ("completion" in row or "chosen" in row):
        prompt = row["prompt"]
        reference = _message_text(row["completion"] if "completion" in row else row["chosen"])
        if isinstance(prompt, list):
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            return tokenizer(text, add_special_tokens=False)["input_ids"], text, reference
        return tokenizer(prompt)["input_ids"], prompt, reference
    if "messages" in row:
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            raise DataError("eval_metrics: a `messages` row has no assistant turn to compare with")
        text = tokenizer.apply_chat_template(messages[:last], add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"], text, str(messages[last].get("content", ""))
    if "text" in row and getattr(settings, "eval_response_template", None):
        template = settings.eval_response_template
        cut = row["text"].find(template)
        if cut < 0:
            raise DataError(f"eval_response_template: {template!r} not found in text row {row['text'][:80]!r}")
        prompt = row["text"][: cut + len(template)]
        return tokenizer(prompt)["input_ids"], prompt, row["text"][cut + len(template) :]
    if "source" in row and "target" in row:
        return tokenizer(row["source"])["input_ids"], row["source"], str(row["target"])
    if "input_ids" in row and "labels" in row:
        ids, labels = list(row["input_ids"]), list(row["labels"])
        reference = tokenizer.decode([t for t in labels if t != -100], skip_special_tokens=True)
        if not encoder_decoder:  # decoder-only: the prompt is what precedes the first target token
            first = next((i for i, t in enumerate(labels) if t != -100), len(ids))
            ids = ids[:first]
        return ids, tokenizer.decode(ids, skip_special_tokens=True), reference
    raise DataError(
        f"eval_metrics: cannot find a prompt and a reference in eval columns {sorted(row)}. Expected prompt + "
        "completion, prompt + chosen, messages, text with --eval_response_template, source + target, or "
        "input_ids + labels."
    )


class GenerationEvaluator:
    """Computes hftrain's evaluation metrics for one trainer (see the module docstring)."""

    def __init__(self, trainer: Any, settings: Any, raw_eval_dataset: Any) -> None:
        self.settings = settings
        self.raw_eval_dataset = raw_eval_dataset
        names = [m for m in settings.eval_metrics]
        self.want_perplexity = "perplexity" in names
        self.want_dpo = "dpo" in names
        self.is_dpo = hasattr(trainer, "ref_model") and hasattr(trainer, "compute_ref_log_probs")
        if self.want_perplexity and self.is_dpo:
            raise ConfigError(
                "eval_metrics: 'perplexity' is not available for DPOTrainer (its loss is not an NLL); "
                "use 'dpo' for preference accuracy and implied KL"
            )
        if self.want_dpo and not self.is_dpo:
            raise ConfigError(f"eval_metrics: 'dpo' needs a DPOTrainer, got {type(trainer).__name__}")
        self.generation_names = [m for m in names if m not in ("perplexity", "dpo")]
        # Build once now so a bad name, import path or offline `evaluate` module fails before training starts.
        MetricSuite(self.generation_names, settings)
        self.tokenizer = _tokenizer_of(trainer.processing_class)
        if self.generation_names:
            if self.tokenizer is None:
                raise ConfigError(
                    "eval_metrics: generation metrics need the trainer's `processing_class` (a tokenizer)"
                )
            if self.tokenizer.pad_token_id is None and self.tokenizer.eos_token_id is None:
                raise ConfigError("eval_metrics: the tokenizer has neither a pad nor an eos token to pad prompts with")
            sample = self._generation_rows(raw_eval_dataset, 1)
            if sample is not None and len(sample):
                example_from_row(sample[0], self.tokenizer, settings, self._encoder_decoder(trainer))
        self._pending: Optional[dict] = None

    # -- hooks called by HFTrainMixin ------------------------------------------------------------------------
    @contextlib.contextmanager
    def pending(self, eval_dataset: Any, metric_key_prefix: str) -> Iterator[None]:
        """Marks an `evaluate()` call in progress; `add_metrics` fills its logs once."""
        self._pending = {"raw": eval_dataset, "prefix": metric_key_prefix, "prepared": None}
        try:
            yield
        finally:
            self._pending = None

    def saw_eval_dataset(self, eval_dataset: Any) -> None:
        """Remembers the prepared dataset the trainer's evaluation loop uses (for perplexity and DPO)."""
        if self._pending is not None:
            self._pending["prepared"] = eval_dataset

    def add_metrics(self, trainer: Any, logs: dict) -> None:
        """Adds hftrain's metrics to the eval `logs` of the `evaluate()` in progress (in place, once)."""
        pending = self._pending
        if pending is None or not any(k.startswith(pending["prefix"] + "_") for k in logs):
            return
        self._pending = None
        prefix = pending["prefix"]
        values = self.compute(trainer, pending["raw"], pending["prepared"], prefix)
        logs.update({f"{prefix}_{k}": v for k, v in values.items()})

    # -- the work ---------------------------------------------------------------------------------------------
    def compute(self, trainer: Any, raw: Any, prepared: Any, prefix: str) -> dict[str, Any]:
        """Every requested metric for one evaluation, identical on every process."""
        split = prefix.split("_", 1)[1] if "_" in prefix else None
        raw = self._resolve(raw, self.raw_eval_dataset, split)
        prepared = self._resolve(prepared, trainer.eval_dataset, split)
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        values: dict[str, Any] = {}
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                if self.generation_names and raw is not None:
                    values.update(self._generation_metrics(trainer, model, raw, prefix))
                if self.want_perplexity and prepared is not None:
                    values.update(self._perplexity(trainer, model, prepared))
                if self.want_dpo and prepared is not None:
                    values.update(self._dpo_metrics(trainer, model, prepared))
        finally:
            model.train(was_training)
        return values

    @staticmethod
    def _resolve(dataset: Any, default: Any, split: Optional[str]) -> Any:
        if dataset is None:
            dataset = default
        if isinstance(dataset, str) and isinstance(default, dict):
            dataset = default.get(dataset)
        if isinstance(dataset, dict):
            dataset = dataset.get(split) if split is not None else None
        return dataset

    @staticmethod
    def _encoder_decoder(trainer: Any) -> bool:
        model = trainer.accelerator.unwrap_model(trainer.model) if trainer.model is not None else None
        return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))

    def _generation_rows(self, dataset: Any, limit: Optional[int]) -> Any:
        if dataset is None or isinstance(dataset, (dict, str)) or not hasattr(dataset, "select"):
            return None
        total = len(dataset)
        count = total if limit is None or limit <= 0 else min(limit, total)
        return dataset.select(range(count))

    def _my_batches(self, trainer: Any, total: int, batch_size: int) -> list[range]:
        """This process's share of the fixed batches over `total` rows (batch i → process i % world)."""
        world, rank = trainer.args.world_size, trainer.args.process_index
        starts = list(range(0, total, batch_size))
        mine = [range(s, min(s + batch_size, total)) for i, s in enumerate(starts) if i % world == rank]
        return mine

    def _gather(self, trainer: Any, payload: Any) -> list:
        if trainer.args.world_size <= 1:
            return [payload]
        from accelerate.utils import gather_object

        return gather_object([payload])

    def _generation_metrics(self, trainer: Any, model: Any, raw: Any, prefix: str) -> dict[str, Any]:
        settings, tokenizer = self.settings, self.tokenizer
        rows = self._generation_rows(raw, settings.eval_generation_samples)
        encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        batch_size = settings.eval_generation_batch_size or trainer.args.per_device_eval_batch_size
        suite = MetricSuite(self.generation_names, settings)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        gen_kwargs = self._generation_kwargs(trainer, tokenizer, pad_id)
        keep = max(0, settings.eval_log_samples)
        samples: list[dict] = []
        device = trainer.accelerator.device
        for batch_rows in self._my_batches(trainer, len(rows), batch_size):
            examples = [example_from_row(row, tokenizer, settings, encoder_decoder) for row in _rows(rows, batch_rows)]
            width = max(len(ids) for ids, _, _ in examples)
            # Left padding: every prompt ends where generation starts.
            input_ids = torch.tensor(
                [[pad_id] * (width - len(ids)) + list(ids) for ids, _, _ in examples], device=device
            )
            attention = torch.tensor(
                [[0] * (width - len(ids)) + [1] * len(ids) for ids, _, _ in examples], device=device
            )
            if settings.eval_do_sample:
                torch.manual_seed(trainer.args.seed + batch_rows.start)  # same draw for a batch on any process count
            output = model.generate(input_ids=input_ids, attention_mask=attention, **gen_kwargs)
            new_tokens = output if encoder_decoder else output[:, width:]
            predictions = [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            references = [ref.strip() for _, _, ref in examples]
            sources = [src for _, src, _ in examples]
            suite.update(predictions, references, sources)
            for index, prompt, prediction, reference in zip(batch_rows, sources, predictions, references):
                if index < keep:
                    samples.append(
                        {"index": index, "prompt": prompt, "generation": prediction, "reference": reference}
                    )
        gathered = self._gather(trainer, (suite.states(), samples))
        values: dict[str, Any] = suite.compute([states for states, _ in gathered])
        table = sorted((s for _, part in gathered for s in part), key=lambda s: s["index"])
        if table:
            path = self._write_samples(trainer, table, prefix)
            if path is not None:
                values["samples_file"] = path
        return values

    def _generation_kwargs(self, trainer: Any, tokenizer: Any, pad_id: int) -> dict[str, Any]:
        settings = self.settings
        num_beams = settings.eval_num_beams or getattr(trainer.args, "generation_num_beams", None) or 1
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings.eval_max_new_tokens,
            "num_beams": num_beams,
            "do_sample": settings.eval_do_sample,
            "pad_token_id": pad_id,
            "eos_token_id": tokenizer.eos_token_id,
            "use_cache": True,
        }
        if settings.eval_do_sample:
            kwargs.update(temperature=settings.eval_temperature, top_p=settings.eval_top_p)
        if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
            kwargs["synced_gpus"] = True  # sharded weights: every rank must take part in every forward
        return kwargs

    def _write_samples(self, trainer: Any, table: list[dict], prefix: str) -> Optional[str]:
        directory = os.path.join(trainer.args.output_dir, "eval_samples")
        path = os.path.join(directory, f"{prefix}_step{trainer.state.global_step}.jsonl")
        if trainer.is_world_process_zero():
            os.makedirs(directory, exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                for row in table:
                    handle.write(json.dumps({"step": trainer.state.global_step, **row}, ensure_ascii=False) + "\n")
            from .tracking.callback import log_samples  # the rows as a table: tracker, TensorBoard, W&B

            log_samples(trainer, prefix, table, path)
        return path

    def _prepared_batches(self, trainer: Any, dataset: Any) -> Iterator[dict]:
        """This process's fixed batches of the prepared eval set, collated by the trainer's own collator."""
        columns = [c for c in dataset.column_names if c in _MODEL_COLUMNS]
        data = dataset.select_columns(columns)
        device = trainer.accelerator.device
        for batch_rows in self._my_batches(trainer, len(data), trainer.args.per_device_eval_batch_size):
            batch = trainer.data_collator(_rows(data, batch_rows))
            yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _perplexity(self, trainer: Any, model: Any, dataset: Any) -> dict[str, Any]:
        nll, tokens = Fraction(0), 0
        encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        for batch in self._prepared_batches(trainer, dataset):
            labels = batch.get("labels")
            if labels is None:
                labels = batch["input_ids"].masked_fill(
                    batch.get("attention_mask", torch.ones_like(batch["input_ids"])) == 0, -100
                )
            inputs = {
                k: v
                for k, v in batch.items()
                if k
                in (
                    "input_ids",
                    "attention_mask",
                    "decoder_input_ids",
                    "decoder_attention_mask",
                    "position_ids",
                    "token_type_ids",
                )
            }
            if encoder_decoder:
                logits = model(**inputs, labels=labels).logits  # labels build decoder_input_ids when absent
            else:
                logits = model(**inputs).logits[:, :-1]
                labels = labels[:, 1:]
            nll += Fraction(token_nll(logits, labels).sum().item())
            tokens += int((labels != -100).sum())
        gathered = self._gather(trainer, {"nll": nll, "tokens": tokens})
        total = merge_states(gathered)
        return {"perplexity": perplexity(total["nll"], total["tokens"]), "nll_tokens": total["tokens"]}

    def _dpo_metrics(self, trainer: Any, model: Any, dataset: Any) -> dict[str, Any]:
        """Preference accuracy, reward margin and implied KL over all pairs, from TRL's own per-batch rewards.

        TRL's `eval_rewards/*` average batch means; these weight each batch by its pairs, so a partial last batch
        (or another process count) does not change them.
        """
        state = {"pairs": 0, "hits": 0, "rewards": Fraction(0), "margin": Fraction(0)}
        for batch in self._prepared_batches(trainer, dataset):
            rewards = host_of(trainer).dpo_batch_rewards(model, batch)
            pairs = int(batch["input_ids"].size(0)) // 2  # the collator stacks [chosen; rejected]
            state["pairs"] += pairs
            state["hits"] += round(rewards["accuracies"] * pairs)  # a mean of 0/1 over the batch's pairs
            state["rewards"] += (Fraction(rewards["chosen"]) + Fraction(rewards["rejected"])) * pairs
            state["margin"] += Fraction(rewards["margins"]) * pairs
        total = merge_states(self._gather(trainer, state))
        pairs = total["pairs"] or 1
        # TRL's rewards are beta * (policy - reference) log-ratios; the implied KL is the unscaled mean log-ratio.
        return {
            "dpo_preference_accuracy": total["hits"] / pairs,
            "dpo_implied_kl": float(total["rewards"] / (2 * pairs)) / float(trainer.args.beta),
            "dpo_reward_margin": float(total["margin"] / pairs),
        }


def _rows(dataset: Any, indices: range) -> list[dict]:
    """Rows `indices` as dicts, read as one slice (row-by-row reads leave reference cycles behind in `datasets`)."""
    columns = dataset[indices.start : indices.stop]
    return [dict(zip(columns, values)) for values in zip(*columns.values())]
