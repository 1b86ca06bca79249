"""hftrain adds no host read (device-to-host sync) per non-logging step over its parent, for Trainer, SFTTrainer and
DPOTrainer with every default feature on. Counted at the dispatcher: `aten._local_scalar_dense` (`.item()`,
`float(t)`), `aten.is_nonzero` (`bool(t)`, `if t:`) and `aten.equal`; plus `Tensor.tolist()` and `Tensor.numpy()`,
which read memory directly on CPU (on a GPU they go through a device-to-host copy, which is the same sync)."""

import copy

import pytest
import torch
import transformers
import trl
from torch.utils._python_dispatch import TorchDispatchMode

import hftrain
from hftrain.builtin import arithmetic_splits, build_tiny_causal_lm, build_tokenizer, preference_splits

READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default, torch.ops.aten.equal.default}
LOGGING_STEPS, STEPS = 4, 8
COMMON = dict(
    max_steps=STEPS,
    per_device_train_batch_size=4,
    learning_rate=1e-3,
    logging_steps=LOGGING_STEPS,
    save_strategy="no",
    report_to="none",
    seed=3,
    disable_tqdm=True,
    use_cpu=True,
)


class _Reads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


class ReadCounter(transformers.TrainerCallback):
    """Counts host reads from the start of each step to the end of its `on_step_end` (added last, so every other
    callback's step-end work is inside the window)."""

    def __init__(self):
        self.per_step: dict[int, int] = {}
        self._mode = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._mode = _Reads()
        self._originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, self._counting(original))
        self._mode.__enter__()

    def _counting(self, original):
        def read(tensor, *args, **kwargs):
            self._mode.count += 1
            return original(tensor, *args, **kwargs)

        return read

    def on_step_end(self, args, state, control, **kwargs):
        self._mode.__exit__(None, None, None)
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        self.per_step[state.global_step] = self._mode.count


def _non_logging_reads(trainer) -> list[int]:
    counter = ReadCounter()
    trainer.add_callback(counter)
    trainer.train()
    steps = [s for s in range(2, STEPS + 1) if s % LOGGING_STEPS]  # step 1 may set things up lazily
    return [counter.per_step[s] for s in steps]


def _trainer(trainer_cls, args_cls, tokenizer, tmp_path, tag):
    args = args_cls(str(tmp_path / tag), **COMMON)
    train, _ = arithmetic_splits(48, 4, seed=1, fmt="text")
    data = train.map(lambda row: tokenizer(row["text"]), remove_columns=train.column_names)
    collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False)
    return trainer_cls(build_tiny_causal_lm(tokenizer, hidden_size=32), args, collator, data)


def _sft(trainer_cls, args_cls, tokenizer, tmp_path, tag):
    args = args_cls(str(tmp_path / tag), **COMMON, bf16=False, gradient_checkpointing=False, max_length=32)
    train, _ = arithmetic_splits(48, 4, seed=1)
    return trainer_cls(
        build_tiny_causal_lm(tokenizer, hidden_size=32), args, train_dataset=train, processing_class=tokenizer
    )


def _dpo(trainer_cls, args_cls, tokenizer, tmp_path, tag):
    args = args_cls(str(tmp_path / tag), **COMMON, bf16=False, gradient_checkpointing=False, max_length=32)
    train, _ = preference_splits(48, 4, seed=1)
    model = build_tiny_causal_lm(tokenizer, hidden_size=32)
    return trainer_cls(model, copy.deepcopy(model), args, train_dataset=train, processing_class=tokenizer)


CASES = {
    "Trainer": (
        _trainer,
        transformers.Trainer,
        transformers.TrainingArguments,
        hftrain.Trainer,
        hftrain.TrainingArguments,
    ),
    "SFTTrainer": (_sft, trl.SFTTrainer, trl.SFTConfig, hftrain.SFTTrainer, hftrain.SFTConfig),
    "DPOTrainer": (_dpo, trl.DPOTrainer, trl.DPOConfig, hftrain.DPOTrainer, hftrain.DPOConfig),
}


@pytest.mark.parametrize("name", list(CASES))
def test_no_host_read_added_per_non_logging_step(name, tmp_path):
    build, parent_cls, parent_args, ours_cls, ours_args = CASES[name]
    tokenizer = build_tokenizer()
    parent = _non_logging_reads(build(parent_cls, parent_args, tokenizer, tmp_path, "parent"))
    ours = _non_logging_reads(build(ours_cls, ours_args, tokenizer, tmp_path, "ours"))
    assert ours == parent, f"host reads per non-logging step: hftrain {ours}, {parent_cls.__name__} {parent}"


def test_the_monitor_reads_per_step_when_an_action_must_come_before_the_update(tmp_path):
    """The test above would pass with the monitor off; this shows it is on and what a per-step action costs."""
    tokenizer = build_tokenizer()
    deferred = _non_logging_reads(_trainer(hftrain.Trainer, hftrain.TrainingArguments, tokenizer, tmp_path, "a"))

    class SkipOnSpikes(hftrain.TrainingArguments):  # a spike action other than warn must act before the update
        def __init__(self, *args, **kwargs):
            super().__init__(*args, monitor_loss_spike_action="skip", **kwargs)

    per_step = _non_logging_reads(_trainer(hftrain.Trainer, SkipOnSpikes, tokenizer, tmp_path, "b"))
    assert all(b > a for a, b in zip(deferred, per_step)), (deferred, per_step)
