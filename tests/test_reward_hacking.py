"""The monitor's reward-hacking check: the training reward rises while the task metric (measured apart from the
rewards) falls, or the reward saturates while the task metric stays low. Unit cases on the callback, a constructed
GRPO run whose reward is gamed while exact match falls, and the GRPO recipe, where it stays silent."""

import os
import runpy

import pytest
import torch
from transformers import TrainerControl, TrainerState

import hftrain
from hftrain.builtin import arithmetic_splits, build_tiny_causal_lm, build_tokenizer
from hftrain.config import HFTrainArguments
from hftrain.monitor import MonitorCallback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Notifier:
    def __init__(self):
        self.events = []

    def notify(self, event, kind, message, **kwargs):
        self.events.append({"event": event, "kind": kind, "message": message, **kwargs})


class _Host:
    callbacks: list = []


class _Args:
    output_dir = "/nonexistent"
    metric_for_best_model = None
    greater_is_better = None


def _run(rewards, task, metric="eval_exact_match", args=None, **settings):
    """Feed one train log (reward) and one evaluation (task metric) per pair; the monitor's findings and control."""
    notifier = _Notifier()
    monitor = MonitorCallback(_Host(), HFTrainArguments(**settings), notifier)
    state, control, args = TrainerState(), TrainerControl(), args or _Args()
    for step, (reward, value) in enumerate(zip(rewards, task), 1):
        state.global_step = 10 * step
        monitor.on_log(args, state, control, logs={"loss": 0.5, "reward": reward})
        monitor.on_evaluate(args, state, control, metrics={"eval_loss": 0.5, metric: value})
    return [e for e in notifier.events if e["kind"] == "reward_hacking"], control


def test_reward_up_task_down_fires_once_with_the_numbers():
    found, control = _run([0.5, 0.6, 0.7, 0.8, 0.9], [0.60, 0.55, 0.50, 0.45, 0.40])
    assert len(found) == 1 and found[0]["step"] == 40  # three evaluations of decline after the first
    assert "0.6 -> 0.45" in found[0]["message"] and "action: warn" in found[0]["message"]
    assert found[0]["metrics"] == {"reward": 0.8, "eval_exact_match": 0.45}
    assert not control.should_training_stop


@pytest.mark.parametrize(
    ("rewards", "task"),
    [
        ([0.5, 0.6, 0.7, 0.8, 0.9], [0.60, 0.55, 0.61, 0.57, 0.60]),  # noisy task metric around a plateau
        ([0.5, 0.6, 0.7, 0.8], [0.600, 0.595, 0.590, 0.585]),  # a steady fall of 2.5%: below min_drop (10%)
        ([0.8, 0.7, 0.6, 0.5], [0.60, 0.55, 0.50, 0.45]),  # both fall: the policy got worse, no reward gamed
        ([0.5, 0.6, 0.7, 0.8], [0.50, 0.55, 0.60, 0.65]),  # both rise: learning
    ],
)
def test_silent_without_a_sustained_divergence(rewards, task):
    assert _run(rewards, task)[0] == []


def test_saturated_reward_with_a_low_task_metric():
    rewards, task = [1.1, 1.1, 1.1, 1.1], [0.10, 0.12, 0.11, 0.10]
    assert _run(rewards, task)[0] == []  # off unless a saturation level is set
    found, control = _run(rewards, task, monitor_reward_saturation=1.05, monitor_reward_hacking_action="stop")
    assert len(found) == 1 and "saturated" in found[0]["message"] and control.should_training_stop


def test_task_metric_is_never_the_reward_and_can_be_named():
    args = _Args()
    args.metric_for_best_model, args.greater_is_better = "eval_reward", True
    rewards, falling = [0.5, 0.6, 0.7, 0.8], [0.60, 0.55, 0.50, 0.45]
    assert len(_run(rewards, falling, args=args)[0]) == 1  # eval_reward skipped: eval_exact_match found
    assert len(_run(rewards, falling, metric="eval_accuracy", monitor_task_metric="accuracy")[0]) == 1
    assert _run(rewards, falling, monitor_reward_hacking_evals=0)[0] == []


def test_settings_are_checked():
    with pytest.raises(hftrain.ConfigError, match="monitor_reward_hacking_action"):
        HFTrainArguments(monitor_reward_hacking_action="skip").validate_hftrain()
    with pytest.raises(hftrain.ConfigError, match="monitor_reward_hacking_min_drop"):
        hftrain.GRPOConfig(output_dir="out", monitor_reward_hacking_min_drop=1.5)


def sevens(completions, **kwargs):
    """A gamed reward: pays for the digit 7, whatever the question."""
    return [c.count("7") / 4 for c in completions]


def _greedy(model, tokenizer, prompts):
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0)
    return [t.strip() for t in tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)]


@pytest.fixture(scope="module")
def confident_policy():
    """A tiny Llama after 60 SFT steps: it answers with digits (mostly wrong ones), confidently enough that a small
    update changes a few answers, not all of them."""
    tokenizer = build_tokenizer()
    model = build_tiny_causal_lm(tokenizer, hidden_size=64)
    train, evaluation = arithmetic_splits(256, 32, seed=1, fmt="prompt_answer")
    args = hftrain.SFTConfig(
        output_dir="unused", max_steps=60, per_device_train_batch_size=64, learning_rate=3e-3, max_length=32,
        bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", tracker=False,
        monitor=False, graceful_signals=False, checkpoint_marker=False, disable_tqdm=True, logging_steps=1000,
    )  # fmt: skip
    data = train.rename_column("answer", "completion")
    hftrain.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer).train()
    # the references are the policy's own greedy answers: exact match starts at 1.0
    answers = _greedy(model, tokenizer, evaluation["prompt"])
    return tokenizer, model.state_dict(), train, evaluation.remove_columns("answer").add_column("answer", answers)


@pytest.mark.parametrize("action", ["stop", "rollback"])
def test_fires_on_a_run_whose_reward_is_gamed_while_exact_match_falls(action, confident_policy, tmp_path):
    """The only reward pays for 7s, so the policy drifts from its own answers while the reward climbs. The monitor
    reports it (log, tracker event, alert) and stops with a checkpoint, or reloads the checkpoint from before the
    fall and goes on at a lower learning rate."""
    tokenizer, weights, train, evaluation = confident_policy
    model = build_tiny_causal_lm(tokenizer, hidden_size=64)
    model.load_state_dict(weights)
    args = hftrain.GRPOConfig(
        output_dir=str(tmp_path / action), max_steps=12, per_device_train_batch_size=32, num_generations=8,
        max_completion_length=4, learning_rate=3e-4, lr_scheduler_type="constant", bf16=False,
        gradient_checkpointing=False, logging_steps=1, eval_strategy="steps", eval_steps=2, save_strategy="steps",
        save_steps=2, per_device_eval_batch_size=16, num_generations_eval=2, eval_metrics=["exact_match"],
        eval_max_new_tokens=4, eval_generation_samples=0, monitor_reward_hacking_evals=2,
        monitor_reward_hacking_action=action, report_to="none", disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = hftrain.GRPOTrainer(model=model, reward_funcs=sevens, args=args, train_dataset=train,
                                  eval_dataset=evaluation, processing_class=tokenizer)  # fmt: skip
    trainer.train()
    monitor = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, MonitorCallback))
    found = [e for e in monitor.notifier.events if e["kind"] == "reward_hacking"]
    history = [(h["step"], h.get("reward"), h.get("eval_exact_match")) for h in trainer.state.log_history]
    assert found, history
    assert "the training reward rose" in found[0]["message"] and "eval_exact_match fell" in found[0]["message"]
    assert found[0]["metrics"]["eval_exact_match"] < 1.0
    if action == "stop":
        assert trainer.state.global_step < 12 and monitor.stopped
        assert os.path.isdir(tmp_path / action / f"checkpoint-{trainer.state.global_step}")
    else:
        rollback = next(e for e in monitor.notifier.events if e["kind"] == "rollback")
        assert "after reward_hacking" in rollback["message"] and rollback["checkpoint"].endswith("checkpoint-2")
        assert trainer.state.global_step == 12 and monitor.rollbacks >= 1
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4 * 0.5**monitor.rollbacks)


def test_silent_on_the_grpo_recipe(tmp_path, capsys):
    main = runpy.run_path(os.path.join(REPO, "recipes", "grpo.py"))["main"]
    trainer, metrics = main(
        ["--output_dir", str(tmp_path / "grpo"), "--sft_output_dir", "", "--sft_warmup_steps", "40",
         "--max_steps", "8", "--eval_steps", "2", "--save_steps", "4", "--logging_steps", "1",
         "--per_device_train_batch_size", "32", "--bundled_train_size", "128", "--bundled_eval_size", "32",
         "--monitor_reward_hacking_evals", "2", "--disable_tqdm", "true"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "held-out exact match before GRPO" in printed and "held-out exact match after GRPO" in printed
    monitor = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, MonitorCallback))
    assert [e for e in monitor.notifier.events if e["kind"] == "reward_hacking"] == []
    assert "eval_exact_match" in metrics and trainer.state.global_step == 8
