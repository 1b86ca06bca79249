"""The written contracts of the architecture: upstream's positional order, upstream's callback list with every
feature off, no import cycle, configuration as a leaf, and private upstream attributes only in the host adapter."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import transformers
import trl

import hftrain
from hftrain.config.groups import HFTRAIN_FIELDS

PACKAGE = Path(hftrain.__file__).parent
PAIRS = {
    "TrainingArguments": (transformers.TrainingArguments, hftrain.TrainingArguments),
    "Seq2SeqTrainingArguments": (transformers.Seq2SeqTrainingArguments, hftrain.Seq2SeqTrainingArguments),
    "SFTConfig": (trl.SFTConfig, hftrain.SFTConfig),
    "DPOConfig": (trl.DPOConfig, hftrain.DPOConfig),
    "GRPOConfig": (trl.GRPOConfig, hftrain.GRPOConfig),
    "RLOOConfig": (trl.RLOOConfig, hftrain.RLOOConfig),
    "KTOConfig": (trl.KTOConfig, hftrain.KTOConfig),
    "RewardConfig": (trl.RewardConfig, hftrain.RewardConfig),
    "DiffusionConfig": (transformers.TrainingArguments, hftrain.DiffusionConfig),
}


def _positional(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init and not f.kw_only]


@pytest.mark.parametrize("name", list(PAIRS))
def test_upstream_positional_order_is_kept(name):
    parent, ours = PAIRS[name]
    assert _positional(ours) == _positional(parent)
    assert [f.name for f in dataclasses.fields(ours)][: len(dataclasses.fields(parent))] == [
        f.name for f in dataclasses.fields(parent)
    ]
    ours_only = {f.name for f in dataclasses.fields(ours)} - {f.name for f in dataclasses.fields(parent)}
    assert ours_only and all(f.kw_only for f in dataclasses.fields(ours) if f.name in ours_only)


@pytest.mark.parametrize("name", list(PAIRS))
def test_constructed_with_positional_arguments_as_upstream(name, tmp_path):
    parent, ours = PAIRS[name]
    out = str(tmp_path / "out")
    # output_dir, per_device_train_batch_size, num_train_epochs, max_steps: upstream's first four fields
    extra = {"num_generations": 3} if name in ("GRPOConfig", "RLOOConfig") else {}  # groups must fill the batch of 3
    args = ours(out, 3, 2.0, 5, use_cpu=True, report_to="none", **extra)
    reference = parent(out, 3, 2.0, 5, use_cpu=True, report_to="none", **extra)
    for field in ("output_dir", "per_device_train_batch_size", "num_train_epochs", "max_steps"):
        assert getattr(args, field) == getattr(reference, field), field
    assert args.auto_resume is True and args.tracker is True  # hftrain's fields keep their defaults


def test_construction_is_pure(tmp_path, monkeypatch):
    """No probing, no I/O, no mutation: a GPU-less two-process launch and a preset change nothing at construction."""
    monkeypatch.setattr("hftrain.launch.world_size_from_env", lambda: 2)  # what a two-process launch announces
    monkeypatch.setattr("hftrain.launch.accelerator_visible", lambda: False)
    args = hftrain.TrainingArguments(
        str(tmp_path / "o"),
        global_batch_size=16,
        per_device_train_batch_size=4,
        optimization_level="light",
        report_to="none",
    )
    assert args.use_cpu is False and args.gradient_accumulation_steps == 1 and not args.bf16
    assert not (tmp_path / "o").exists()
    resolved = hftrain.resolve_arguments(args)
    assert resolved.use_cpu is True and resolved.gradient_accumulation_steps == 2  # 16 = 4 x 2 x 2 processes
    assert any("bf16 mixed precision: refused" in line for line in resolved.hftrain_preset_report)
    assert args.use_cpu is False and args.gradient_accumulation_steps == 1  # the user's object is left as it was


def _callback_types(trainer) -> list[str]:
    return [type(cb).__name__ for cb in trainer.callback_handler.callbacks]


OFF = dict(tracker=False, monitor=False, graceful_signals=False, checkpoint_marker=False)


def test_with_every_feature_off_the_callback_list_is_the_parents(tmp_path, monkeypatch):
    from hftrain.builtin import build_tiny_causal_lm, build_tokenizer

    monkeypatch.delenv("HFTRAIN_ALERT_WEBHOOK_URL", raising=False)
    tokenizer = build_tokenizer()
    model = build_tiny_causal_lm(tokenizer, hidden_size=32)
    common = dict(report_to="none", use_cpu=True, max_steps=1)
    parent = transformers.Trainer(model, transformers.TrainingArguments(str(tmp_path / "p"), **common))
    off = hftrain.Trainer(model, hftrain.TrainingArguments(str(tmp_path / "h"), **common, **OFF))
    assert _callback_types(off) == _callback_types(parent)
    with_parent_args = hftrain.Trainer(model, transformers.TrainingArguments(str(tmp_path / "q"), **common))
    on = hftrain.Trainer(model, hftrain.TrainingArguments(str(tmp_path / "d"), **common))
    added = set(_callback_types(on)) - set(_callback_types(parent))
    # the README lists these among the deliberate differences
    assert added == {
        "AlertCallback",
        "MonitorCallback",
        "SignalCallback",
        "CheckpointMarkerCallback",
        "TrackerCallback",
    }
    assert set(_callback_types(with_parent_args)) - set(_callback_types(parent)) == added
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in readme for name in added)


@pytest.mark.parametrize("field", ["monitor", "graceful_signals", "checkpoint_marker", "tracker"])
def test_each_callback_can_be_switched_off_alone(field, tmp_path):
    from hftrain.builtin import build_tiny_causal_lm, build_tokenizer

    tokenizer = build_tokenizer()
    args = hftrain.TrainingArguments(str(tmp_path), report_to="none", use_cpu=True, **{field: False})
    names = _callback_types(hftrain.Trainer(build_tiny_causal_lm(tokenizer, hidden_size=32), args))
    owner = {
        "monitor": "MonitorCallback",
        "graceful_signals": "SignalCallback",
        "checkpoint_marker": "CheckpointMarkerCallback",
        "tracker": "TrackerCallback",
    }[field]
    assert owner not in names


def _imports(path: Path) -> set[str]:
    """hftrain modules `path` imports (absolute or relative, at any depth of the file)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _module_path(candidate) else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("hftrain") and _module_path(name)}


def _module_path(name: str):
    base = PACKAGE.parent.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {i for i in _imports(path) if i != name and not name.startswith(i + ".")}
    return graph


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_configuration_is_a_leaf():
    for name, imports in _graph().items():
        if name.startswith("hftrain.config"):
            assert imports <= {"hftrain.errors"} | {i for i in imports if i.startswith("hftrain.config")}, name


# Private attributes of transformers'/TRL's trainers and accelerate's objects that features once reached into.
_PRIVATE = re.compile(
    r"\._(tr_loss|load_from_checkpoint|load_optimizer_and_scheduler|train_batch_size|"
    r"globalstep_last_logged|compute_loss|prepare_inputs|metrics)\b|accelerator\.__dict__"
)


def test_only_the_host_adapter_touches_upstream_private_attributes():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "host.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PRIVATE.search(code) and not code.lstrip().startswith("def "):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_trainer_adapter_and_diffusion_loop_implement_the_contract(tmp_path):
    from hftrain.builtin import build_tiny_causal_lm, build_tokenizer
    from hftrain.host import TrainingHost, host_of

    tokenizer = build_tokenizer()
    trainer = hftrain.Trainer(
        build_tiny_causal_lm(tokenizer, hidden_size=32),
        hftrain.TrainingArguments(str(tmp_path), report_to="none", use_cpu=True),
    )
    host = host_of(trainer)
    assert isinstance(host, TrainingHost) and host is host_of(trainer)
    assert host.batch_geometry().global_batch == 8 and host.checkpoint_format == "trainer"
    assert set(HFTRAIN_FIELDS) <= {f.name for f in dataclasses.fields(hftrain.TrainingArguments)}
