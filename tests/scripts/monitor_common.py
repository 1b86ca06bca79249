"""Tiny trainers with injectable anomalies, shared by the monitor/alert/resume tests and the kill script.

The model is a 2-layer Llama with hidden size 32 built from the local byte tokenizer; data are fixed token rows,
so no TRL import is needed for plain `Trainer` tests.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
from datasets import Dataset
from transformers import TrainerCallback

from hftrain.builtin import build_tiny_causal_lm, build_tokenizer
from hftrain.config import TrainingArguments
from hftrain.trainers import Trainer

TOKENIZER = build_tokenizer()


def tiny_model(seed: int = 0):
    """A 2-layer, hidden-32 Llama with random weights fixed by `seed`."""
    return build_tiny_causal_lm(TOKENIZER, hidden_size=32, num_layers=2, num_heads=4, seed=seed)


def token_rows(n: int = 64, length: int = 12, seed: int = 0, identical: bool = False) -> Dataset:
    """`n` rows of `length` byte tokens (arithmetic text), labels = input_ids; fixed-length, so no padding."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        a, b = (3, 4) if identical else torch.randint(10, 99, (2,), generator=g).tolist()
        text = f"{a}+{b}={a + b};" * 4
        ids = TOKENIZER(text)["input_ids"][:length]
        rows.append({"input_ids": ids, "labels": ids})
    return Dataset.from_list(rows)


class InjectingTrainer(Trainer):
    """hftrain's Trainer with test hooks: a NaN (or scaled) loss, or gradients scaled, at chosen steps.

    Steps are 1-based optimizer steps (the step an update completes), like `state.global_step` after it.
    """

    def __init__(self, *args, nan_at=(), loss_scale_at=None, grad_scale_at=None, raise_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.nan_at, self.loss_scale_at, self.grad_scale_at, self.raise_at = (
            set(nan_at),
            loss_scale_at,
            grad_scale_at,
            raise_at,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        step = self.state.global_step + 1
        if step == self.raise_at:
            raise RuntimeError(f"injected failure at step {step}")
        if step in self.nan_at:
            loss = loss * float("nan")
        if self.loss_scale_at and step == self.loss_scale_at[0]:
            loss = loss * self.loss_scale_at[1]
        return loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        out = super().training_step(model, inputs, num_items_in_batch)
        if self.grad_scale_at and self.state.global_step + 1 == self.grad_scale_at[0]:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(self.grad_scale_at[1])
        return out


def make_args(output_dir: str, **overrides) -> TrainingArguments:
    """CPU arguments for a short deterministic run; override anything."""
    values = dict(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        max_steps=12,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        monitor_min_history=4,
        lr_scheduler_type="constant",
    )
    values.update(overrides)
    return TrainingArguments(**values)


class Snapshots(TrainerCallback):
    """Copies of the weights (and AdamW first moments) at each step end, keyed by global_step (0 = start)."""

    def __init__(self):
        self.weights, self.moments = {}, {}

    def _take(self, state, model, optimizer):
        self.weights[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if optimizer is not None:
            self.moments[state.global_step] = {
                id(p): optimizer.state[p]["exp_avg"].clone()
                for g in optimizer.param_groups
                for p in g["params"]
                if p in optimizer.state and "exp_avg" in optimizer.state[p]
            }

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        self._take(state, model, optimizer)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        self._take(state, model, optimizer)


def same_weights(a: dict, b: dict) -> bool:
    """True when two state dicts hold bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def all_finite(state_dict: dict) -> bool:
    """True when no tensor holds NaN or Inf."""
    return all(bool(torch.isfinite(v).all()) for v in state_dict.values() if v.is_floating_point())


def notifier_of(trainer):
    """The run's notifier (held by hftrain's AlertCallback)."""
    from hftrain.alerts import AlertCallback

    return next(cb.notifier for cb in trainer.callback_handler.callbacks if isinstance(cb, AlertCallback))


def events(trainer, kind: Optional[str] = None) -> list:
    """The monitor's alerts, optionally only those of one kind."""
    return [e for e in notifier_of(trainer).events if kind is None or e["kind"] == kind]


def finite(x: float) -> bool:
    return math.isfinite(x)


def env_defaults() -> None:
    """The environment conftest sets, for scripts run outside pytest."""
    for k, v in {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }.items():
        os.environ.setdefault(k, v)
