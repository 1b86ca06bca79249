"""The training monitor on a tiny Llama: injected NaNs, gradient explosions, loss spikes, stalls, overfitting."""

import sys
from pathlib import Path

import pytest
import torch
from transformers import EarlyStoppingCallback, TrainerCallback

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from monitor_common import (  # noqa: E402
    InjectingTrainer,
    Snapshots,
    all_finite,
    events,
    make_args,
    same_weights,
    tiny_model,
    token_rows,
)

from hftrain.checkpoints import checkpoint_problem  # noqa: E402
from hftrain.errors import ConfigError  # noqa: E402
from hftrain.monitor import MonitorCallback, RobustWindow  # noqa: E402


def _train(tmp_path, callbacks=(), eval_dataset=None, **kw):
    inject = {k: kw.pop(k) for k in ("nan_at", "loss_scale_at", "grad_scale_at") if k in kw}
    snaps = Snapshots()
    trainer = InjectingTrainer(
        model=tiny_model(),
        args=make_args(str(tmp_path / "out"), **kw),
        train_dataset=token_rows(),
        eval_dataset=eval_dataset,
        callbacks=[snaps, *callbacks],
        **inject,
    )
    trainer.train()
    return trainer, snaps


def test_nan_loss_is_skipped_weights_and_adam_state_untouched(tmp_path):
    # logging_steps=5: the loss of step 3 is never logged on its own, yet the update must not happen.
    trainer, snaps = _train(tmp_path, nan_at=[3], logging_steps=5, max_steps=6)
    assert same_weights(snaps.weights[2], snaps.weights[3]), "the NaN step changed the weights"
    assert not same_weights(snaps.weights[3], snaps.weights[4]), "training did not go on after the skip"
    assert snaps.moments[2].keys() == snaps.moments[3].keys()
    assert all(torch.equal(snaps.moments[2][k], snaps.moments[3][k]) for k in snaps.moments[2])
    assert all_finite(trainer.model.state_dict())
    monitor = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, MonitorCallback))
    assert monitor.skipped_steps == [3]
    (anomaly,) = events(trainer, "nonfinite")
    assert anomaly["step"] == 3 and "action: skip" in anomaly["message"]
    assert [e["step"] for e in events(trainer, "skip")] == [3]
    assert trainer.state.global_step == 6


def test_nan_with_warn_poisons_weights(tmp_path):
    # The same injection without skipping: proves the injected NaN really reaches the weights otherwise.
    trainer, snaps = _train(tmp_path, nan_at=[3], max_steps=4, monitor_nonfinite_action="warn")
    assert not all_finite(snaps.weights[3])
    assert events(trainer, "nonfinite") and not events(trainer, "skip")


def test_gradient_explosion_detected_before_clipping_and_skipped(tmp_path):
    # Clipping (max_grad_norm=1) would hide a 1e6 gradient from the weights' point of view; the monitor sees the
    # pre-clip norm transformers computed.
    trainer, snaps = _train(
        tmp_path, grad_scale_at=(8, 1e6), max_steps=10, max_grad_norm=1.0, monitor_grad_explosion_action="skip"
    )
    (anomaly,) = events(trainer, "grad_explosion")
    assert anomaly["step"] == 8 and anomaly["metrics"]["grad_norm"] > 1e4
    assert same_weights(snaps.weights[7], snaps.weights[8])
    assert [e["step"] for e in events(trainer, "skip")] == [8]


def test_loss_spike_stop_saves_checkpoint_and_stops(tmp_path):
    trainer, snaps = _train(tmp_path, loss_scale_at=(9, 50.0), max_steps=12, monitor_loss_spike_action="stop")
    assert trainer.state.global_step == 9
    assert [e["step"] for e in events(trainer, "loss_spike")] == [9]
    checkpoint = tmp_path / "out" / "checkpoint-9"
    assert checkpoint_problem(str(checkpoint)) is None
    assert same_weights(snaps.weights[8], snaps.weights[9]), "the spiking update reached the saved weights"
    assert events(trainer, "stop") and events(trainer, "stopped")


def test_rollback_reloads_checkpoint_lowers_lr_then_stops_after_limit(tmp_path):
    trainer, snaps = _train(
        tmp_path,
        nan_at=[7, 10],
        max_steps=14,
        save_strategy="steps",
        save_steps=4,
        monitor_nonfinite_action="rollback",
        monitor_max_rollbacks=1,
        monitor_rollback_lr_factor=0.5,
    )
    (rollback,) = events(trainer, "rollback")
    assert rollback["step"] == 7 and rollback["checkpoint"].endswith("checkpoint-4")
    assert same_weights(snaps.weights[4], snaps.weights[7]), "weights after the rollback are not checkpoint-4's"
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-2)
    # The second NaN finds the rollback budget spent: stop with a checkpoint.
    assert trainer.state.global_step == 10
    assert checkpoint_problem(str(tmp_path / "out" / "checkpoint-10")) is None
    assert all_finite(trainer.model.state_dict())


def test_repeated_skips_escalate_to_stop(tmp_path):
    trainer, _ = _train(tmp_path, nan_at=[3, 4, 5], max_steps=10, monitor_max_skips=3)
    assert [e["step"] for e in events(trainer, "skip")] == [3, 4]
    assert trainer.state.global_step == 5 and events(trainer, "stop")


def test_zero_learning_rate_and_flat_loss(tmp_path):
    data = token_rows(identical=True)  # every batch is the same, so with lr 0 the loss is exactly constant
    trainer = InjectingTrainer(
        model=tiny_model(),
        train_dataset=data,
        args=make_args(str(tmp_path / "out"), learning_rate=0.0, max_steps=6, monitor_stall_logs=3),
    )
    trainer.train()
    assert [e["step"] for e in events(trainer, "lr_zero")] == [1]
    assert [e["step"] for e in events(trainer, "loss_flat")] == [3], "reported once, when it became flat"


def test_stall_stop(tmp_path):
    trainer = InjectingTrainer(
        model=tiny_model(),
        train_dataset=token_rows(),
        args=make_args(
            str(tmp_path / "out"), learning_rate=0.0, max_steps=6, monitor_stall_logs=3, monitor_stall_action="stop"
        ),
    )
    trainer.train()
    assert trainer.state.global_step == 1 and checkpoint_problem(str(tmp_path / "out" / "checkpoint-1")) is None


class FakeEvalLoss(TrainerCallback):
    """Injects eval metrics (runs before hftrain's callbacks, which are added after the user's)."""

    def __init__(self, values, key="eval_loss"):
        self.values, self.key, self.n = values, key, 0

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        metrics[self.key] = self.values[min(self.n, len(self.values) - 1)]
        self.n += 1


def test_overfitting_rising_eval_loss_stops(tmp_path):
    trainer, _ = _train(
        tmp_path,
        callbacks=[FakeEvalLoss([1.0, 1.5, 2.0, 2.5, 3.0])],
        eval_dataset=token_rows(8, seed=1),
        eval_strategy="steps",
        eval_steps=3,
        max_steps=15,
        learning_rate=5e-3,
        overfit_patience=2,
        overfit_action="stop",
    )
    (anomaly,) = events(trainer, "overfit_rising")
    assert anomaly["step"] == 9 and trainer.state.global_step == 9
    assert checkpoint_problem(str(tmp_path / "out" / "checkpoint-9")) is None


def test_overfitting_gap_warns_once(tmp_path):
    trainer, _ = _train(
        tmp_path,
        callbacks=[FakeEvalLoss([50.0])],
        eval_dataset=token_rows(8, seed=1),
        eval_strategy="steps",
        eval_steps=3,
        max_steps=9,
        overfit_gap=10.0,
    )
    gaps = events(trainer, "overfit_gap")
    assert [e["step"] for e in gaps] == [3] and gaps[0]["metrics"]["eval_loss"] == 50.0
    assert trainer.state.global_step == 9  # warn only


def test_early_stopping_on_any_metric_with_transformers_callback(tmp_path):
    trainer, _ = _train(
        tmp_path,
        callbacks=[FakeEvalLoss([0.5, 0.6, 0.55, 0.58, 0.9], key="eval_score")],
        eval_dataset=token_rows(8, seed=1),
        eval_strategy="steps",
        eval_steps=2,
        max_steps=20,
        early_stopping_patience=2,
        early_stopping_metric="score",
        early_stopping_mode="max",
        early_stopping_threshold=0.01,
    )
    assert any(isinstance(cb, EarlyStoppingCallback) for cb in trainer.callback_handler.callbacks)
    # best 0.6 at step 4; 0.55 (step 6) and 0.58 (step 8) do not improve -> stop at 8, with a checkpoint.
    assert trainer.state.global_step == 8
    assert [e["step"] for e in events(trainer, "early_stop")] == [8]
    assert checkpoint_problem(str(tmp_path / "out" / "checkpoint-8")) is None


def test_monitor_changes_nothing_and_draws_no_random_numbers(tmp_path):
    results = []
    for enabled in (True, False):
        torch.manual_seed(123)
        trainer = InjectingTrainer(
            model=tiny_model(),
            train_dataset=token_rows(),
            args=make_args(str(tmp_path / str(enabled)), max_steps=8, monitor=enabled),
        )
        trainer.train()
        results.append(
            (
                trainer.model.state_dict(),
                [h.get("loss") for h in trainer.state.log_history],
                torch.random.get_rng_state(),
            )
        )
    assert same_weights(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]
    assert torch.equal(results[0][2], results[1][2])


def test_robust_window():
    w = RobustWindow(size=10, min_count=3)
    assert w.zscore(5.0) is None
    for v in (1.0, 1.1, 0.9, 1.0, 1.05):
        w.add(v)
    assert w.median() == 1.0
    assert w.zscore(1.1) < 2 and w.zscore(100.0) > 50
    # `exceeds` makes the same decision as comparing `zscore` with the threshold, for values on both sides of it
    import random

    rng = random.Random(0)
    for _ in range(2000):
        w.add(rng.uniform(0.5, 1.5))
        value, threshold = rng.uniform(-1, 4), rng.choice([1.0, 3.0, 6.0])
        z = w.zscore(value)
        assert w.exceeds(value, threshold) == (z if z > threshold else None)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("monitor_nonfinite_action", "ignore", "warn, skip, stop, rollback"),
        ("monitor_stall_action", "skip", "warn, stop"),
        ("monitor_spike_threshold", 0, "positive"),
        ("monitor_rollback_lr_factor", 2.0, "(0, 1]"),
        ("alert_webhook_url", "slack.com/x", "http"),
        ("early_stopping_mode", "up", "set early_stopping_patience"),
    ],
)
def test_bad_monitor_settings_are_config_errors(tmp_path, field, value, needle):
    with pytest.raises(ConfigError, match=field) as err:
        make_args(str(tmp_path / "o"), **{field: value})
    assert needle in str(err.value)
    assert not (tmp_path / "o").exists()


def test_rollback_without_checkpoints_and_early_stopping_without_eval_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="save_strategy"):
        make_args(str(tmp_path / "o"), monitor_loss_spike_action="rollback")
    with pytest.raises(ConfigError, match="eval_strategy"):
        make_args(str(tmp_path / "o"), early_stopping_patience=2)
    with pytest.raises(ConfigError, match="metric_for_best_model"):
        make_args(
            str(tmp_path / "o"),
            early_stopping_patience=2,
            eval_strategy="steps",
            eval_steps=2,
            early_stopping_metric="bleu",
            metric_for_best_model="eval_loss",
        )
