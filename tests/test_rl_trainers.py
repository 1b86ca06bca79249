"""GRPO, RLOO, KTO and reward-model trainers: task metrics apart from the rewards, preference metrics, and every
hftrain feature (tracker, monitor, signals, safe resume, curriculum where it applies) on tiny models.

The drop-in equality with upstream (same losses, same weights) is in tests/test_dropin.py.
"""

import copy
import json
import os
import runpy
import sqlite3

import pytest
import torch

import hftrain
from hftrain.builtin import (
    answer_reward,
    arithmetic_splits,
    build_tiny_causal_lm,
    build_tiny_reward_model,
    build_tokenizer,
    format_reward,
    preference_splits,
)
from hftrain.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RL = {"GRPO": (hftrain.GRPOTrainer, hftrain.GRPOConfig), "RLOO": (hftrain.RLOOTrainer, hftrain.RLOOConfig)}
COMMON = dict(bf16=False, gradient_checkpointing=False, report_to="none", seed=3, disable_tqdm=True, logging_steps=1)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _greedy(model, tokenizer, prompts, max_new_tokens=4):
    """The model's own greedy completions (stripped), as hftrain's evaluation generates them."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    tokenizer.padding_side = side
    return [t.strip() for t in tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)]


def _rl_trainer(kind, tokenizer, tmp_path, model=None, evaluation=None, reward_funcs=None, **overrides):
    trainer_cls, config_cls = RL[kind]
    train, held_out = arithmetic_splits(32, 8, seed=1, fmt="prompt_answer")
    evaluation = held_out if evaluation is None else evaluation
    settings = dict(
        COMMON, max_steps=2, per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
        learning_rate=1e-3, beta=0.0, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=8,
        num_generations_eval=2, eval_metrics=["exact_match", "numeric_match"], eval_max_new_tokens=4,
        eval_generation_samples=0, eval_log_samples=8, save_strategy="no",
    )  # fmt: skip
    settings.update(overrides)
    args = config_cls(output_dir=str(tmp_path / kind), **settings)
    model = model if model is not None else build_tiny_causal_lm(tokenizer, hidden_size=32)
    rewards = reward_funcs if reward_funcs is not None else [answer_reward, format_reward]
    return trainer_cls(model=model, reward_funcs=rewards, args=args, train_dataset=train, eval_dataset=evaluation,
                       processing_class=tokenizer)  # fmt: skip


@pytest.mark.parametrize("kind", list(RL))
def test_rl_task_metrics_come_from_greedy_completions_not_the_rewards(kind, tokenizer, tmp_path):
    """References set to the model's own greedy completions: exact match is 1.0 (numeric match 0: they are not
    numbers), measured on the policy's greedy completions against the reference column, whatever TRL sampled; the
    samples file shows prompt, completion, reference and each reward function's score of those completions."""
    model = build_tiny_causal_lm(tokenizer, hidden_size=32)
    _, evaluation = arithmetic_splits(32, 8, seed=1, fmt="prompt_answer")
    greedy = _greedy(model, tokenizer, evaluation["prompt"])
    assert all(g and not g.lstrip("-").isdigit() for g in greedy)  # a random model: neither reward pays for these
    evaluation = evaluation.remove_columns("answer").add_column("answer", greedy)
    trainer = _rl_trainer(kind, tokenizer, tmp_path, model=model, evaluation=evaluation)
    metrics = trainer.evaluate()
    assert metrics["eval_exact_match"] == 1.0 and metrics["eval_numeric_match"] == 0.0 and "eval_reward" in metrics
    rows = [json.loads(line) for line in open(metrics["eval_samples_file"], encoding="utf-8")]
    assert [r["generation"] for r in rows] == greedy and [r["reference"] for r in rows] == greedy
    assert all(r["rewards"] == {"answer_reward": 1.0, "format_reward": 0.0} for r in rows)
    assert rows[0]["prompt"] == trainer.eval_dataset[0]["prompt"]


@pytest.mark.parametrize("kind", list(RL))
def test_rl_training_logs_task_metrics_and_picks_the_best_checkpoint_by_them(kind, tokenizer, tmp_path):
    trainer = _rl_trainer(kind, tokenizer, tmp_path, metric_for_best_model="eval_exact_match",
                          save_strategy="steps", save_steps=2)  # fmt: skip
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_exact_match" in h]
    assert evals and "eval_reward" in evals[-1] and "eval_numeric_match" in evals[-1]
    assert trainer.state.best_metric == evals[-1]["eval_exact_match"]
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    rows = [json.loads(line) for line in open(evals[-1]["eval_samples_file"], encoding="utf-8")]
    assert set(rows[0]) == {"step", "index", "prompt", "generation", "reference", "rewards"}
    assert set(rows[0]["rewards"]) == {"answer_reward", "format_reward"}


def _tracked_keys(db: str) -> set:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("select name from metric_keys")}


def test_grpo_runs_every_feature_tracker_monitor_signals_and_safe_resume(tokenizer, tmp_path):
    """Defaults on (tracker, monitor, signals, checkpoint markers): the run is tracked with its rewards and task
    metrics; a run resumed from checkpoint-2 ends with the uninterrupted run's weights."""
    names = {type(cb).__name__ for cb in _rl_trainer("GRPO", tokenizer, tmp_path).callback_handler.callbacks}
    assert {"MonitorCallback", "SignalCallback", "CheckpointMarkerCallback", "TrackerCallback"} <= names
    common = dict(save_strategy="steps", save_steps=2, eval_steps=4, lr_scheduler_type="constant")
    full = _rl_trainer("GRPO", tokenizer, tmp_path / "full", max_steps=4, **common)
    full.train()
    keys = _tracked_keys(os.environ["HFTRAIN_TRACKER_DB"])
    assert {"reward", "rewards/answer_reward/mean", "eval_exact_match", "eval_reward"} <= keys
    _rl_trainer("GRPO", tokenizer, tmp_path / "cut", max_steps=2, **common).train()  # stops after checkpoint-2
    resumed = _rl_trainer("GRPO", tokenizer, tmp_path / "cut", max_steps=4, **common)
    resumed.train(resume_from_checkpoint=True)
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


@pytest.mark.parametrize("kind", list(RL))
def test_rl_curriculum_is_refused_with_the_reason(kind, tmp_path):
    with pytest.raises(ConfigError, match="repeats each prompt"):
        RL[kind][1](output_dir=str(tmp_path), curriculum="column", curriculum_column="difficulty", **COMMON)


def _kto_trainer(tokenizer, tmp_path, **overrides):
    train, evaluation = preference_splits(32, 6, seed=1)
    model = build_tiny_causal_lm(tokenizer, hidden_size=32)
    settings = dict(COMMON, max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3, max_length=32,
                    eval_strategy="steps", eval_steps=4, per_device_eval_batch_size=16, eval_metrics=["kto"])  # fmt: skip
    settings.update(overrides)
    args = hftrain.KTOConfig(output_dir=str(tmp_path / "kto"), **settings)
    return hftrain.KTOTrainer(model, copy.deepcopy(model), args, train_dataset=train, eval_dataset=evaluation,
                              processing_class=tokenizer)  # fmt: skip


def test_kto_reward_gap_and_preference_accuracy_match_trl(tokenizer, tmp_path):
    """One eval batch holds all 12 rows, so TRL's batch means are the exact means hftrain computes per row."""
    trainer = _kto_trainer(tokenizer, tmp_path, curriculum="column", curriculum_column="difficulty")
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_kto_desirable_reward"] == pytest.approx(metrics["eval_rewards/chosen"], abs=1e-5)
    assert metrics["eval_kto_undesirable_reward"] == pytest.approx(metrics["eval_rewards/rejected"], abs=1e-5)
    assert metrics["eval_kto_reward_gap"] == pytest.approx(metrics["eval_rewards/margins"], abs=1e-5)
    assert 0.0 <= metrics["eval_kto_preference_accuracy"] <= 1.0
    assert metrics["eval_kto_reward_gap"] != 0.0  # trained away from the reference
    assert any("curriculum/open_share" in h for h in trainer.state.log_history)


def test_reward_model_pairwise_accuracy_and_margin(tokenizer, tmp_path):
    train, evaluation = preference_splits(32, 6, seed=1)
    args = hftrain.RewardConfig(output_dir=str(tmp_path / "rm"), max_steps=4, per_device_train_batch_size=4,
                                learning_rate=1e-3, max_length=32, eval_strategy="steps", eval_steps=4,
                                per_device_eval_batch_size=16, eval_metrics=["pairwise"], curriculum="column",
                                curriculum_column="difficulty", **COMMON)  # fmt: skip
    trainer = hftrain.RewardTrainer(build_tiny_reward_model(tokenizer, hidden_size=32), args, train_dataset=train,
                                    eval_dataset=evaluation, processing_class=tokenizer)  # fmt: skip
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_pairwise_accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)
    assert metrics["eval_pairwise_margin"] == pytest.approx(metrics["eval_margin"], abs=1e-5)
    assert any("curriculum/open_share" in h for h in trainer.state.log_history)


@pytest.mark.parametrize(
    ("metric", "trainer_name"),
    [("kto", "GRPO"), ("pairwise", "GRPO"), ("perplexity", "GRPO"), ("exact_match", "Reward")],
)
def test_metrics_of_another_trainer_kind_are_refused(metric, trainer_name, tokenizer, tmp_path):
    if trainer_name == "GRPO":
        with pytest.raises(ConfigError, match=metric if metric != "exact_match" else "generation"):
            _rl_trainer("GRPO", tokenizer, tmp_path, eval_metrics=[metric])
        return
    train, evaluation = preference_splits(8, 4, seed=1)
    args = hftrain.RewardConfig(output_dir=str(tmp_path), eval_metrics=[metric], max_length=32, **COMMON)
    with pytest.raises(ConfigError, match="does not generate"):
        hftrain.RewardTrainer(build_tiny_reward_model(tokenizer, hidden_size=32), args, train_dataset=train,
                              eval_dataset=evaluation, processing_class=tokenizer)  # fmt: skip


RECIPE_FLAGS = ["--max_steps", "4", "--bundled_train_size", "32", "--bundled_eval_size", "8", "--tiny_hidden_size", "32",
                "--tiny_num_layers", "1", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
                "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1", "--disable_tqdm", "true"]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "printed", "metric"),
    [
        ("kto", "held-out preference accuracy", "eval_kto_reward_gap"),
        ("reward", "pairwise accuracy", "eval_pairwise_accuracy"),
    ],
)
def test_preference_recipes_run_offline_and_print_before_and_after(name, printed, metric, tmp_path, capsys):
    main = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes", f"{name}.py"))["main"]
    out = tmp_path / name
    trainer, metrics = main(["--output_dir", str(out), "--sft_output_dir", str(tmp_path / "none"), *RECIPE_FLAGS])
    text = capsys.readouterr().out
    assert f"{printed} before training" in text and f"{printed} after training" in text
    assert trainer.state.global_step == 4 and metric in metrics
    assert (out / "README.md").exists() and (out / "model.safetensors").exists()
    if name == "kto":  # TRL reads KTO rows in order: the first batches mix both labels only if they were shuffled
        assert 0 < sum(trainer.train_dataset["label"][:16]) < 16


def test_kto_recipe_unpairs_and_shuffles_with_its_seed():
    """TRL unpairs a paired set in blocks (every desirable row, then every undesirable one) and reads KTO rows in
    order; the recipe unpairs and shuffles first, with the run's seed."""
    from datasets import Dataset

    shuffled_unpaired = runpy.run_path(os.path.join(REPO, "recipes", "kto.py"))["shuffled_unpaired"]
    paired, _ = preference_splits(64, 4, seed=1)
    rows = shuffled_unpaired(paired, seed=0)
    assert len(rows) == 128 and sum(rows["label"]) == 64 and 0 < sum(rows["label"][:16]) < 16
    assert {(r["prompt"], r["completion"], r["label"]) for r in rows} == {
        (p["prompt"], p[column], column == "chosen") for p in paired for column in ("chosen", "rejected")
    }
    assert rows["completion"] != shuffled_unpaired(paired, seed=1)["completion"]
    bare = Dataset.from_list([{"chosen": "2+2=4", "rejected": "2+2=5"}])  # no prompt: the shared start is one
    assert sorted((r["prompt"], r["completion"]) for r in shuffled_unpaired(bare, 0)) == [("2+2=", "4"), ("2+2=", "5")]
    unpaired = Dataset.from_list([{"prompt": "1+1=", "completion": str(i), "label": i == 2} for i in range(8)])
    assert sorted(shuffled_unpaired(unpaired, 0)["completion"]) == [str(i) for i in range(8)]  # kept as it is


def test_reward_recipe_puts_a_score_head_on_the_sft_output(tmp_path, capsys):
    tokenizer = build_tokenizer()
    sft = tmp_path / "sft-default"
    build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=1).save_pretrained(sft)
    tokenizer.save_pretrained(sft)
    main = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes", "reward.py"))["main"]
    trainer, _ = main(["--output_dir", str(tmp_path / "rm"), "--sft_output_dir", str(sft), *RECIPE_FLAGS])
    assert f"reward model on {sft}" in capsys.readouterr().out
    assert type(trainer.model).__name__ == "LlamaForSequenceClassification" and trainer.model.config.num_labels == 1
    assert "AutoModelForSequenceClassification" in (tmp_path / "rm" / "README.md").read_text()


def test_grpo_warm_up_keeps_the_users_model_size_and_not_their_grpo_variables(tmp_path, monkeypatch):
    """The built-in SFT warm-up builds the model size given to GRPO, ignores `HFTRAIN_<FIELD>` settings meant for
    GRPO (SFT refuses a GRPO loss type), and a folder holding only a config (a save killed halfway) is not reused."""
    main = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes", "grpo.py"))["main"]
    monkeypatch.setenv("HFTRAIN_LOSS_TYPE", "dr_grpo")
    out = tmp_path / "grpo"
    (out / "sft-warmup").mkdir(parents=True)
    (out / "sft-warmup" / "config.json").write_text("{}")  # no weights
    flags = ["--output_dir", str(out), "--sft_output_dir", "", "--sft_warmup_steps", "2", "--tiny_hidden_size", "32",
             "--tiny_num_layers", "1", "--max_steps", "1", "--bundled_train_size", "16", "--bundled_eval_size", "4",
             "--per_device_train_batch_size", "8", "--num_generations", "4", "--eval_strategy", "no",
             "--save_strategy", "no", "--overwrite_output_dir", "true", "--disable_tqdm", "true"]  # fmt: skip
    trainer, _ = main(flags)
    assert trainer.args.loss_type == "dr_grpo" and trainer.state.global_step == 1
    config = json.loads((out / "sft-warmup" / "config.json").read_text())
    assert config["hidden_size"] == 32 and config["num_hidden_layers"] == 1
    assert os.environ["HFTRAIN_LOSS_TYPE"] == "dr_grpo"  # given back after the warm-up


def test_reward_recipe_without_pairwise_metrics_prints_trls_accuracy(tmp_path, capsys):
    """Without `eval_metrics: [pairwise]` the recipe reads TRL's own accuracy (logged as eval_accuracy whatever
    the prefix) instead of failing on a missing key."""
    import yaml

    recipes = os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes")
    with open(os.path.join(recipes, "configs", "reward_default.yaml"), encoding="utf-8") as handle:
        config = {**yaml.safe_load(handle), "eval_metrics": []}
    config.pop("metric_for_best_model", None)
    (tmp_path / "rm.yaml").write_text(yaml.safe_dump(config))
    main = runpy.run_path(os.path.join(recipes, "reward.py"))["main"]
    flags = ["--config", str(tmp_path / "rm.yaml"), "--output_dir", str(tmp_path / "rm"), "--sft_output_dir", ""]
    trainer, metrics = main([*flags, *RECIPE_FLAGS])
    assert trainer.state.global_step == 4 and "eval_accuracy" in metrics
    assert "held-out pairwise accuracy before training" in capsys.readouterr().out


def test_preference_bench_runs_each_recipe_and_reports_before_after_wall_and_target(tmp_path):
    """bench/preference.py as a real process on a tiny starting model, one seed, 2 steps per recipe: a row per
    recipe and seed with both accuracies and the wall time, and a verdict per recipe (not met: exit status 1)."""
    import subprocess
    import sys

    tokenizer = build_tokenizer()
    sft = tmp_path / "sft"
    build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=1).save_pretrained(sft)
    tokenizer.save_pretrained(sft)
    tiny = ["--max_steps", "2", "--bundled_train_size", "32", "--bundled_eval_size", "8", "--per_device_train_batch_size",
            "4", "--per_device_eval_batch_size", "8", "--eval_steps", "2", "--save_steps", "2"]  # fmt: skip
    command = [sys.executable, os.path.join(REPO, "bench", "preference.py"), "--seeds", "0", "--sft_output_dir",
               str(sft), "--workdir", str(tmp_path / "bench"), "--json", str(tmp_path / "r.json"), "--", *tiny]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 1, done.stderr[-2000:]
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["recipe"] for r in rows] == ["dpo", "kto", "reward"]
    assert all({"before", "after"} <= set(r) and 0 < r["wall_s"] < 600 for r in rows)
    assert [r["before"] for r in rows[:2]] == [0.0, 0.0]  # policy = reference: every pair a tie
    for name in ("dpo", "kto", "reward"):
        assert f"{name:6s} seed 0: before" in done.stdout and f"{name:6s} mean after" in done.stdout
    assert done.stdout.count("target NOT met") == 3
