"""Model card and Hub push: everything up to the Hub client call is real; only HfApi's network calls are replaced."""

import json
import os
import runpy

import pytest

from hftrain import cli
from hftrain.hub import files_to_push

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--max_steps",
    "4",
    "--logging_steps",
    "2",
    "--eval_steps",
    "2",
    "--save_steps",
    "2",
    "--disable_tqdm",
    "true",
    "--per_device_train_batch_size",
    "8",
    "--bundled_train_size",
    "64",
    "--bundled_eval_size",
    "16",
    "--push_to_hub",
    "true",
    "--hub_model_id",
    "someone/tiny-sft",
    "--hub_private_repo",
    "true",
]


class FakeHub:
    """Records what hftrain hands the Hub client; `fail` makes the upload raise like a network error."""

    def __init__(self, monkeypatch, fail=False):
        self.calls, self.fail = [], fail
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.calls.append(("create_repo", api.token, repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(api, **kwargs):
            hub.calls.append(("upload_folder", api.token, kwargs["repo_id"], kwargs))
            if hub.fail:
                raise ConnectionError("Connection reset by peer")

        monkeypatch.setattr("huggingface_hub.HfApi.create_repo", create_repo)
        monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", upload_folder)


@pytest.fixture(scope="module")
def sft_main():
    return runpy.run_path(os.path.join(REPO, "recipes", "sft.py"))["main"]


def test_push_uploads_exact_files_with_card_and_history(sft_main, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_123")
    hub = FakeHub(monkeypatch)
    out = tmp_path / "run"
    trainer, metrics = sft_main(["--output_dir", str(out), *TINY, "--global_batch_size", "16"])
    assert not trainer.args.push_to_hub  # the trainer itself never pushed (no per-checkpoint uploads, no TRL card)
    (kind1, token1, repo1, create), (kind2, token2, repo2, upload) = hub.calls
    assert (kind1, kind2, repo1, repo2) == ("create_repo", "upload_folder", "someone/tiny-sft", "someone/tiny-sft")
    assert token1 == token2 == "hf_test_token_123" and create["private"] is True and create["exist_ok"] is True
    assert upload["folder_path"] == str(out)
    assert upload["allow_patterns"] == sorted(
        [
            "README.md",
            "all_results.json",
            "chat_template.jinja",
            "config.json",
            "eval_results.json",
            "generation_config.json",
            "model.safetensors",
            "run_history/history.csv",
            "run_history/run.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "train_results.json",
            "trainer_state.json",
            "training_args.bin",
        ]
    )
    assert "pushed to https://huggingface.co/someone/tiny-sft" in capsys.readouterr().out

    card = (out / "README.md").read_text()
    assert "model-index" in card and "name: someone/tiny-sft" in card and "type: text-generation" in card
    assert f"value: {metrics['eval_loss']}" in card  # machine-readable final eval loss
    assert "| global_batch_size | 16 |" in card and "| effective_batch_size | 16 |" in card
    assert "Best checkpoint (step" in card and "## Curriculum" in card and "run_history/history.csv" in card
    assert "hf_test_token_123" not in card
    # the loading code reads from the Hub repo it was pushed to, not the local folder
    assert "AutoModelForCausalLM.from_pretrained('someone/tiny-sft')" in card and str(out) not in card
    history = (out / "run_history" / "history.csv").read_text().splitlines()
    assert history[0] == "key,step,value,epoch,wall_time" and any(line.startswith("loss,2,") for line in history)
    record = json.loads((out / "hftrain_push.json").read_text())
    assert record == {"repo_id": "someone/tiny-sft", "private": True, "revision": None}  # never the token


def test_failed_push_keeps_results_and_retry_with_cli(sft_main, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_123")
    FakeHub(monkeypatch, fail=True)
    out = tmp_path / "run"
    sft_main(["--output_dir", str(out), *TINY, "--eval_strategy", "no", "--save_strategy", "no"])
    err = capsys.readouterr().err
    assert "push to someone/tiny-sft failed (ConnectionError: Connection reset by peer)" in err
    assert f"the results are safe in {out}" in err and f"retry with: hftrain push {out}" in err
    before = files_to_push(str(out))
    assert "model.safetensors" in before and "README.md" in before

    hub = FakeHub(monkeypatch)  # the network is back
    assert cli.main(["push", str(out)]) == 0
    (_, _, repo, create), (_, token, _, upload) = hub.calls
    assert repo == "someone/tiny-sft" and create["private"] is True and token == "hf_test_token_123"
    assert upload["allow_patterns"] == before


def test_cli_push_without_repo_id_or_token_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    (tmp_path / "config.json").write_text("{}")
    assert cli.main(["push", str(tmp_path)]) == 2
    assert "push: no repo id; pass --repo_id" in capsys.readouterr().err
    assert cli.main(["push", str(tmp_path), "--repo_id", "a/b"]) == 2
    assert "push: no Hub token" in capsys.readouterr().err


def test_files_to_push_skips_checkpoints_and_private_files(tmp_path):
    for name in (
        "config.json",
        "checkpoint-2/model.safetensors",
        "_tmp/x",
        ".cache/y",
        "runs/events.out",
        "hftrain_push.json",
        "merged/model.safetensors",
        "eval_samples/eval_step4.jsonl",
    ):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert files_to_push(str(tmp_path)) == ["config.json", "eval_samples/eval_step4.jsonl", "merged/model.safetensors"]
