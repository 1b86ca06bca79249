"""Lineage: a run started from another run's output records that run (tracker tags, run_history/run.json),
`hftrain runs show` names it, and the model card points `base_model` at the parent's own base and names the run."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hftrain import cli
from hftrain.tracking.lineage import find_parent_run, parent_tags
from hftrain.tracking.store import TrackerStore

REPO = Path(__file__).resolve().parents[1]
TINY = (
    "--max_steps 2 --logging_steps 1 --eval_steps 2 --save_steps 2 --disable_tqdm true --bundled_train_size 32 "
    "--bundled_eval_size 8 --tiny_hidden_size 32 --tiny_num_layers 1 --per_device_train_batch_size 8 "
    "--per_device_eval_batch_size 8 --eval_generation_samples 0"
).split()


def run_recipe(name: str, argv: list[str]):
    return runpy.run_path(str(REPO / "recipes" / f"{name}.py"))["main"](argv)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A finished SFT run in its own database, whose card then says it was trained from a Hub model (as a run of
    `--model_name_or_path someone/base-model` would), so a child's card has a base to inherit."""
    folder = tmp_path_factory.mktemp("lineage")
    db, out = folder / "runs.db", folder / "sft-out"
    trainer, _ = run_recipe("sft", ["--output_dir", str(out), "--tracker_db", str(db), *TINY])
    card = ModelCard.load(out / "README.md")
    card.data.base_model, card.data.license = "someone/base-model", "mit"
    card.save(out / "README.md")
    return {"db": db, "out": out, "uuid": find_tracker_uuid(trainer)}


def find_tracker_uuid(trainer) -> str:
    from hftrain.tracking.callback import find_tracker

    return find_tracker(trainer).run_uuid


def tags_of(db: Path, run_uuid: str) -> dict:
    with TrackerStore(str(db), create=False) as store:
        return store.tags(store.run_by_uuid(run_uuid)["id"])


def test_dpo_from_an_sft_output_names_its_parent_everywhere(sft_run, tmp_path, capsys):
    db, parent_uuid = sft_run["db"], sft_run["uuid"]
    out = tmp_path / "dpo"
    trainer, _ = run_recipe(
        "dpo", ["--output_dir", str(out), "--tracker_db", str(db), "--sft_output_dir", str(sft_run["out"]), *TINY]
    )
    child_uuid = find_tracker_uuid(trainer)
    printed = capsys.readouterr().out
    assert f"started from {sft_run['out']}: the output of run {parent_uuid[:8]} (sft-out" in printed

    # the tracker and the exported history
    assert tags_of(db, child_uuid) == {"parent_run": parent_uuid, "parent_path": str(sft_run["out"])}
    record = json.loads((out / "run_history" / "run.json").read_text())
    assert record["parent"]["uuid"] == parent_uuid and record["tags"]["parent_run"] == parent_uuid

    # `hftrain runs show` names the parent, in text and JSON
    assert cli.main(["runs", "--db", str(db), "show", child_uuid[:8]]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.strip().startswith("parent"))
    assert f"{parent_uuid[:8]}  sft-out  (experiment default, finished) (started from {sft_run['out']})" in line
    assert cli.main(["runs", "--db", str(db), "show", child_uuid[:8], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["parent"]
    assert shown["uuid"] == parent_uuid and shown["name"] == "sft-out" and shown["status"] == "finished"

    # the card: the parent's base and license, and the parent run by name
    card = ModelCard.load(out / "README.md", ignore_metadata_errors=False)
    assert card.data.base_model == "someone/base-model" and card.data.license == "mit"
    text = (out / "README.md").read_text()
    assert f"the output of hftrain run `{parent_uuid[:8]}` (`sft-out`, experiment `default`)" in text
    assert f"## Lineage\n\nStarted from `{sft_run['out']}`, the output of hftrain run `{parent_uuid}`" in text


def test_a_checkpoint_belongs_to_its_run_found_in_the_tracker_without_run_history(sft_run, tmp_path):
    db, out = sft_run["db"], sft_run["out"]
    checkpoint = out / "checkpoint-2"
    found = find_parent_run(str(checkpoint), str(db))
    assert found["uuid"] == sft_run["uuid"] and found["found_in"].endswith("run_history/run.json")
    assert found["path"] == str(checkpoint)

    history = out / "run_history"
    shutil.move(history, tmp_path / "run_history")  # as if the run had been stopped before its end
    try:
        found = find_parent_run(str(checkpoint), str(db))
        assert found["uuid"] == sft_run["uuid"] and found["found_in"] == str(db)
        assert find_parent_run(str(checkpoint), str(tmp_path / "other.db")) is None  # no record anywhere
    finally:
        shutil.move(tmp_path / "run_history", history)
    assert parent_tags(str(out), str(db), own_uuid=sft_run["uuid"]) == {}  # never its own parent
    assert find_parent_run(str(tmp_path), str(db)) is None and find_parent_run("someone/base-model") is None


def test_the_tracker_records_the_parent_when_a_run_starts(sft_run, tmp_path):
    """Any trainer whose model was loaded from a run's output folder (here hftrain's drop-in Trainer, no recipe):
    the parent is tagged when the run is created, so a run that never finishes still has it."""
    import torch
    from transformers import AutoModelForCausalLM

    from hftrain import Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(sft_run["out"])
    rows = [{"input_ids": torch.arange(1, 9), "labels": torch.arange(1, 9)} for _ in range(4)]
    args = TrainingArguments(
        str(tmp_path / "child"),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to="none",
        use_cpu=True,
        tracker_db=str(sft_run["db"]),
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    assert tags_of(sft_run["db"], find_tracker_uuid(trainer))["parent_run"] == sft_run["uuid"]


def test_runs_show_names_a_parent_recorded_in_another_database(tmp_path, capsys):
    with TrackerStore(str(tmp_path / "runs.db")) as store:
        store.create_run("default", "child", tags={"parent_run": "ab" * 16, "parent_path": "/data/sft-out"})
    assert cli.main(["runs", "--db", str(tmp_path / "runs.db"), "show", "child"]) == 0
    assert f"parent      {'ab' * 16}, not in this database (started from /data/sft-out)" in capsys.readouterr().out


def test_an_untracked_run_that_wrote_the_folder_last_has_no_parent_record(sft_run, tmp_path):
    """A folder whose own run_history says an untracked run wrote it last is not attributed to an older tracked
    run the database still lists for that folder (its weights were replaced)."""
    db, out = sft_run["db"], sft_run["out"]
    copy = tmp_path / "sft-out"
    shutil.copytree(out, copy)
    with TrackerStore(str(db)) as store:  # the older tracked run of this folder
        store.conn.execute("UPDATE runs SET output_dir = ? WHERE uuid = ?", (str(copy), sft_run["uuid"]))
    try:
        record = json.loads((copy / "run_history" / "run.json").read_text())
        assert find_parent_run(str(copy), str(db))["uuid"] == sft_run["uuid"]
        (copy / "run_history" / "run.json").write_text(json.dumps({k: v for k, v in record.items() if k != "uuid"}))
        assert find_parent_run(str(copy), str(db)) is None
    finally:
        with TrackerStore(str(db)) as store:
            store.conn.execute("UPDATE runs SET output_dir = ? WHERE uuid = ?", (str(out), sft_run["uuid"]))
