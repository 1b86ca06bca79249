"""Generation metrics, token-weighted perplexity and DPO preference metrics at every evaluation.

`GenerationEvaluator` is what `HFTrainMixin` delegates to when `eval_metrics` is set. At each `evaluate()` it
runs, after the trainer's own evaluation loop and before its metrics are logged:

* generation: prompts only, left-padded batches, `max_new_tokens` and decoding settings from `args`, on the first
  `eval_generation_samples` rows; each batch is decoded, fed to the streaming metrics and dropped;
* perplexity: one forward pass per batch over the whole prepared eval set, summing NLL and target tokens;
* DPO: TRL's own rewards of each batch (its DPO loss path, through `hftrain.host.TrainerHost.dpo_batch_rewards`), weighted by pairs, for preference
  accuracy, reward margin and implied KL;
* KTO: each eval row's implied reward (beta x policy/reference log-ratio, TRL's fused log-probs), for the
  desirable/undesirable reward gap and the preference accuracy over rows that share a prompt;
* reward models (`pairwise`): the scores of each eval pair, for pairwise accuracy and mean margin.

GRPO/RLOO eval rows are a prompt and a reference column (`eval_reference_column`): the metrics come from the
policy's own greedy (or configured) completions, independent of the reward functions, and the samples file adds
each reward function's score of those completions (TRL's own reward path, `TrainerHost.reward_scores`).

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
# The columns KTO's collator reads (TRL's reference path also scores the KL completions when it uses them).
_KTO_COLUMNS = ("prompt_ids", "completion_ids", "KL_completion_ids", "label", "ref_logps", "ref_KL_logps")
# Trainers that take eval metrics of their own kind, by the TRL class they derive from.
_NO_GENERATION = {"RewardTrainer": "a reward model scores text, it does not generate; use 'pairwise'"}
_NO_PERPLEXITY = ("DPOTrainer", "KTOTrainer", "RewardTrainer", "GRPOTrainer", "RLOOTrainer")
_KIND_METRICS = {"dpo": "DPOTrainer", "kto": "KTOTrainer", "pairwise": "RewardTrainer"}


def _upstream(trainer: Any) -> Optional[str]:
    """The name of the TRL trainer `trainer` derives from (found in the MRO, so TRL is never imported here)."""
    return next((c.__name__ for c in type(trainer).__mro__ if c.__module__.startswith("trl.")), None)


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

    Layouts: `prompt` + `completion` (SFT), `prompt` + `chosen` (DPO) or `prompt` + `eval_reference_column`
    (GRPO/RLOO; default `answer`), as strings or message lists;
    `messages` (the last assistant turn is the reference); `text` split at `eval_response_template`;
    `source` + `target`; or tokenised `input_ids` + `labels` (labels != -100 are the reference).
    """
    reference_key = next((k for k in ("completion", "chosen", _reference_column(settings)) if k in row), None)
    if "prompt" in row and reference_key is not None:
        prompt = row["prompt"]
        reference = _message_text(row[reference_key])
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
        f"completion, prompt + chosen, prompt + {_reference_column(settings)} (eval_reference_column), messages, "
        "text with --eval_response_template, source + target, or input_ids + labels."
    )


def _reference_column(settings: Any) -> str:
    return getattr(settings, "eval_reference_column", None) or "answer"


class GenerationEvaluator:
    """Computes hftrain's evaluation metrics for one trainer (see the module docstring)."""

    def __init__(self, trainer: Any, settings: Any, raw_eval_dataset: Any) -> None:
        self.settings = settings
        self.raw_eval_dataset = raw_eval_dataset
        names = [m for m in settings.eval_metrics]
        self.upstream = _upstream(trainer)
        self.want_perplexity = "perplexity" in names
        self.want_kind = [m for m in _KIND_METRICS if m in names]  # dpo, kto, pairwise
        self._check_kinds(trainer, names)
        self.generation_names = [m for m in names if m != "perplexity" and m not in _KIND_METRICS]
        if self.generation_names and self.upstream in _NO_GENERATION:
            raise ConfigError(
                f"eval_metrics: {self.generation_names} need generation; {_NO_GENERATION[self.upstream]}"
            )
        self.reward_names = list(getattr(trainer, "reward_func_names", None) or [])  # GRPO/RLOO
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

    def _check_kinds(self, trainer: Any, names: list) -> None:
        if self.want_perplexity and self.upstream in _NO_PERPLEXITY:
            raise ConfigError(
                f"eval_metrics: 'perplexity' is not available for {self.upstream} (its loss is not an NLL of eval "
                "targets); use 'dpo', 'kto' or 'pairwise' for preference metrics, generation metrics for GRPO/RLOO"
            )
        for name in self.want_kind:
            if self.upstream != _KIND_METRICS[name]:
                raise ConfigError(
                    f"eval_metrics: '{name}' needs a {_KIND_METRICS[name]}, got {type(trainer).__name__}"
                )

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
                if self.want_kind and prepared is not None:
                    kind = {"dpo": self._dpo_metrics, "kto": self._kto_metrics, "pairwise": self._pairwise_metrics}
                    values.update(kind[self.want_kind[0]](trainer, model, prepared))
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
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            predictions = [t.strip() for t in texts]
            references = [ref.strip() for _, _, ref in examples]
            sources = [src for _, src, _ in examples]
            suite.update(predictions, references, sources)
            for index, prompt, prediction, reference, text in zip(batch_rows, sources, predictions, references, texts):
                if index < keep:
                    samples.append(
                        {"index": index, "prompt": prompt, "generation": prediction, "reference": reference, "": text}
                    )
        gathered = self._gather(trainer, (suite.states(), samples))
        values: dict[str, Any] = suite.compute([states for states, _ in gathered])
        table = sorted((s for _, part in gathered for s in part), key=lambda s: s["index"])
        self._add_reward_scores(trainer, rows, table)
        if table:
            path = self._write_samples(trainer, table, prefix)
            if path is not None:
                values["samples_file"] = path
        return values

    def _add_reward_scores(self, trainer: Any, rows: Any, table: list[dict]) -> None:
        """Each reward function's score of the samples' completions (GRPO/RLOO), as TRL scores a rollout.

        Every process holds the same gathered table and scores it together (TRL's reward path gathers)."""
        completions = [sample.pop("") for sample in table]
        if not self.reward_names or not table:
            return
        raw = [dict(row) for row in _rows(rows.select([s["index"] for s in table]), range(len(table)))]
        prompts = [row["prompt"] for row in raw]
        if isinstance(prompts[0], list):  # conversational: TRL scores the completion as an assistant message
            completions = [[{"role": "assistant", "content": text}] for text in completions]
            ids = [self.tokenizer(c[0]["content"], add_special_tokens=False)["input_ids"] for c in completions]
        else:
            ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
        scores = host_of(trainer).reward_scores(raw, prompts, completions, ids)
        for sample, row_scores in zip(table, scores):
            sample["rewards"] = row_scores

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

    def _prepared_batches(self, trainer: Any, dataset: Any, wanted: tuple = _MODEL_COLUMNS) -> Iterator[dict]:
        """This process's fixed batches of the prepared eval set, collated by the trainer's own collator."""
        columns = [c for c in dataset.column_names if c in wanted]
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

    def _kto_metrics(self, trainer: Any, model: Any, dataset: Any) -> dict[str, Any]:
        """KTO's implied rewards of every eval row (beta x (log pi - log pi_ref) of the completion, TRL's fused
        log-probs; the reference as TRL takes it: precomputed, `ref_model`, or the adapter-disabled policy):
        the desirable/undesirable means and their gap, and the preference accuracy over prompts that have one
        desirable and one undesirable row (a paired set that TRL unpaired)."""
        rows: list[tuple] = []  # (prompt ids, label, reward)
        reference = trainer.ref_model if trainer.ref_model is not None else model
        data = dataset.select_columns([c for c in dataset.column_names if c in _KTO_COLUMNS])
        device = trainer.accelerator.device
        for batch_rows in self._my_batches(trainer, len(data), trainer.args.per_device_eval_batch_size):
            examples = _rows(data, batch_rows)
            batch = {
                k: v.to(device) if isinstance(v, torch.Tensor) else v
                for k, v in trainer.data_collator(examples).items()
            }
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
            forward = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                            fused_lm_head=True)  # fmt: skip
            policy = forward.log_probs[:, -(labels.size(1) - 1) :].sum(-1)
            ref = batch["ref_logps"] if "ref_logps" in batch else trainer.compute_ref_log_probs(reference, batch)[0]
            rewards = (float(trainer.args.beta) * (policy - ref.to(policy.device))).tolist()
            prompts = [tuple(example["prompt_ids"]) for example in examples]
            rows += list(zip(prompts, batch["label"].bool().tolist(), rewards))
        rows = [row for part in self._gather(trainer, rows) for row in part]
        return _kto_summary(rows)

    def _pairwise_metrics(self, trainer: Any, model: Any, dataset: Any) -> dict[str, Any]:
        """A reward model on every eval pair: share of pairs scored chosen > rejected, and the mean margin."""
        state = {"pairs": 0, "hits": 0, "margin": Fraction(0)}
        for batch in self._prepared_batches(trainer, dataset):
            scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
            chosen, rejected = scores.float().chunk(2)  # the collator stacks [chosen; rejected]
            state["pairs"] += int(chosen.numel())
            state["hits"] += int((chosen > rejected).sum())
            state["margin"] += sum((Fraction(m) for m in (chosen - rejected).tolist()), Fraction(0))
        total = merge_states(self._gather(trainer, state))
        pairs = total["pairs"] or 1
        return {"pairwise_accuracy": total["hits"] / pairs, "pairwise_margin": float(total["margin"] / pairs)}


def _kto_summary(rows: list[tuple]) -> dict[str, Any]:
    """Means per label, their gap, and the pair accuracy (ties count as misses, as DPO's accuracies do)."""
    desirable = [reward for _, label, reward in rows if label]
    undesirable = [reward for _, label, reward in rows if not label]
    by_prompt: dict = {}
    for prompt, label, reward in rows:
        by_prompt.setdefault(prompt, {}).setdefault(label, []).append(reward)
    pairs = [
        (d[True][0], d[False][0]) for d in by_prompt.values() if len(d.get(True, ())) == len(d.get(False, ())) == 1
    ]
    values = {
        "kto_desirable_reward": sum(desirable) / max(1, len(desirable)),
        "kto_undesirable_reward": sum(undesirable) / max(1, len(undesirable)),
    }
    values["kto_reward_gap"] = values["kto_desirable_reward"] - values["kto_undesirable_reward"]
    if pairs:
        values["kto_preference_accuracy"] = sum(good > bad for good, bad in pairs) / len(pairs)
    return values


def _rows(dataset: Any, indices: range) -> list[dict]:
    """Rows `indices` as dicts, read as one slice (row-by-row reads leave reference cycles behind in `datasets`)."""
    columns = dataset[indices.start : indices.stop]
    return [dict(zip(columns, values)) for values in zip(*columns.values())]
