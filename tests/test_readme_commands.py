"""Every command in README.md and in every script's usage line runs as written, with small step counts.

Commands are read from the README's code blocks and inline code, the recipes' `Usage:` docstrings and the scripts'
header comments; each must match one entry of HANDLERS (a new command without one fails `test_every_command_is_
covered`). Recipe commands run in-process through the recipe's `main` with tiny sizes appended (later flags win);
a command this machine cannot run (a GPU-only accelerate config, a Hub model offline) must end in one `error:` line.
A few run as real processes: the quickstart and test scripts, `--help`, a bad flag through one and two processes.
The troubleshooting table's examples are checked against the lines the catalogue's cases print.
"""

from __future__ import annotations

import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hftrain.errors import HFTrainError
from hftrain.recipes_cli import RECIPES

REPO = Path(__file__).resolve().parents[1]
SUBCOMMAND = rf"(^hftrain|-m hftrain\.cli) ({'|'.join(RECIPES)})\b"  # a recipe as `hftrain sft`
COMMAND = re.compile(
    rf"^(?:\w+=\S+ )*(accelerate launch|python |hftrain (runs|tune|push|{'|'.join(RECIPES)})\b|bash scripts/)"
)
SMALL = {
    "sft": "--max_steps 2 --bundled_train_size 32 --bundled_eval_size 8 --tiny_hidden_size 32 --tiny_num_layers 1 "
    "--per_device_train_batch_size 4 --per_device_eval_batch_size 8 --eval_steps 2 --save_steps 2 --logging_steps 1 "
    "--eval_generation_samples 4 --eval_max_new_tokens 4 --disable_tqdm true",
    "seq2seq": "--max_steps 2 --bundled_train_size 32 --bundled_eval_size 8 --per_device_train_batch_size 4 "
    "--per_device_eval_batch_size 8 --eval_steps 2 --save_steps 2 --eval_generation_samples 4 --eval_max_new_tokens 4 "
    "--disable_tqdm true",
    "pretrain": "--max_steps 2 --block_size 32 --max_eval_samples 8 --tiny_hidden_size 32 --per_device_train_batch_size 4"
    " --eval_steps 2 --save_steps 2 --disable_tqdm true",
    "diffusion": "--max_steps 2 --eval_steps 2 --save_steps 2 --logging_steps 1 --eval_num_samples 4 "
    "--num_inference_steps 2 --per_device_train_batch_size 8 --per_device_eval_batch_size 4 --disable_tqdm true",
}
SMALL["dpo"] = SMALL["sft"]
# What this machine may answer instead of training: no GPU, no Hub (tests run with HF_HUB_OFFLINE=1).
CANNOT_RUN_HERE = ("needs a CUDA GPU", "needs CUDA GPUs", "deepspeed package is not installed", "HF_HUB_OFFLINE=1")


# -- reading the commands -------------------------------------------------------------------------------------------
def _joined(lines: list[str]) -> list[str]:
    """Lines with shell continuations joined and trailing comments dropped."""
    out, current = [], ""
    for line in lines:
        current += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            out.append(re.sub(r"\s+#\s.*$", "", current).strip())
            current = ""
    return out


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    commands, block, inside = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            if inside and block is not None:
                commands += [c.removeprefix("$ ") for c in _joined(block)]
            inside, block = not inside, ([] if line[3:].strip() in ("", "bash", "sh", "text") else None)
        elif inside and block is not None:
            block.append(line)
    commands += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [part.strip() for c in commands for part in c.split(" && ") if COMMAND.match(part.strip())]


def usage_commands() -> list[str]:
    commands = []
    for recipe in sorted((REPO / "recipes").glob("*.py")):
        usage = re.search(r"\nUsage:\n(.*?)\n\n", recipe.read_text(), re.S)
        commands += _joined([line.strip() for line in usage.group(1).splitlines()]) if usage else []
    for script in sorted((REPO / "scripts").glob("*.sh")):
        header = [line.lstrip("#").strip() for line in script.read_text().splitlines() if line.startswith("#")]
        commands += [line for line in _joined(header) if COMMAND.match(line)]
    return commands


def is_command(text: str) -> bool:
    """A whole command, not a mention: it names a script or an `hftrain` subcommand, holds no placeholder, and does
    not end in a flag that wants a value."""
    if not COMMAND.match(text) or re.search(r"…|\.\.\.|/show/|<(?!tune_dir>)", text):
        return False
    if not re.search(rf"(recipes|scripts|bench)/\w+\.(py|sh)|^hftrain (runs|tune|push) \w|{SUBCOMMAND}", text):
        return False
    return text.split()[-1] not in ("-o", "--out", "--config", "--config_file")


ALL_COMMANDS = sorted({c for c in readme_commands() + usage_commands() if is_command(c)})

MINE = ("sft", "dpo", "seq2seq", "pretrain")  # recipes this test trains; the others' owners test their training
RECIPE = re.compile(r"^(?:accelerate launch|python -m hftrain\.launch|python)\s+(.*?)(recipes/(\w+)\.py)(.*)$")
HANDLERS = [  # (kind, pattern): the first match handles the command
    ("quickstart-torch-variant", r"^HFTRAIN_TORCH=\S+ bash scripts/quickstart\.sh"),
    ("script", r"^bash scripts/(quickstart|test)\.sh"),
    ("gpu-script", r"^bash scripts/(gpu_check|fetch_gpu_wheels)\.sh"),
    ("bench", r"^(\w+=\S+ )*python bench/\w+\.py"),
    ("runs-serve", r"^hftrain runs serve"),
    ("runs", r"^hftrain runs "),
    ("tune", r"^hftrain tune "),
    ("push", r"^hftrain push "),
    ("best-config", r"recipes/sft\.py --config <tune_dir>/best_config\.yaml$"),
    ("recipe-subcommand-launch", rf"-m hftrain\.cli ({'|'.join(RECIPES)})\b"),  # these two: test_installed_cli.py
    ("recipe-subcommand", SUBCOMMAND),
    ("recipe-env", rf"^(HFTRAIN_\w+=\S+ )+python\s.*recipes/({'|'.join(MINE)})\.py"),
    ("recipe-run", rf"^(accelerate launch|python -m hftrain\.launch|python)\s.*recipes/({'|'.join(MINE)})\.py"),
    ("recipe-parse", r"^(accelerate launch|python -m hftrain\.launch|python)\s.*recipes/\w+\.py"),
]


def kind_of(command: str):
    return next((kind for kind, pattern in HANDLERS if re.search(pattern, command)), None)


def of_kind(kind: str) -> list[str]:
    return [c for c in ALL_COMMANDS if kind_of(c) == kind]


def test_every_command_is_covered():
    assert len(ALL_COMMANDS) > 30, ALL_COMMANDS  # the extraction still finds the README's commands
    assert [c for c in ALL_COMMANDS if kind_of(c) is None] == []
    assert {kind for kind, _ in HANDLERS} <= {kind_of(c) for c in ALL_COMMANDS}  # no stale handler


# -- recipes --------------------------------------------------------------------------------------------------------
def _absolute(tokens: list[str]) -> list[str]:
    """Repository paths made absolute, so a command runs from a scratch folder (its outputs land there)."""
    return [str(REPO / t) if re.match(r"^(recipes|accelerate_configs)/", t) else t for t in tokens]


def split_recipe_command(command: str):
    """(launcher flags, recipe name, recipe arguments) of a recipe command."""
    match = RECIPE.match(command)
    return _absolute(shlex.split(match.group(1))), match.group(3), _absolute(shlex.split(match.group(4)))


def launcher_refusal(launcher: list[str]):
    """The accelerate config check's one line for this machine, or None when the launch can run here."""
    if not launcher:
        return None
    from accelerate.commands.launch import launch_command_parser

    from hftrain.launch import check_accelerate_config

    try:
        check_accelerate_config(launch_command_parser().parse_args([*launcher, "recipe.py"]))
    except HFTrainError as exc:
        return str(exc)
    return None


def run_recipe(name: str, argv: list[str], parse_only: bool = False):
    namespace = runpy.run_path(str(REPO / "recipes" / f"{name}.py"))
    return namespace["parse_args"](argv) if parse_only else namespace["main"](argv)


def check_recipe_command(command: str, parse_only: bool) -> None:
    launcher, name, argv = split_recipe_command(command)
    refusal = launcher_refusal(launcher)
    if refusal is not None:  # e.g. DeepSpeed or multi-GPU on a CPU machine: one line, nothing run
        assert any(reason in refusal for reason in CANNOT_RUN_HERE), refusal
        return
    try:
        run_recipe(name, [*argv, *shlex.split(SMALL.get(name, ""))], parse_only)
    except HFTrainError as exc:
        assert any(reason in str(exc) for reason in CANNOT_RUN_HERE), str(exc)  # a Hub model offline, QLoRA, ...
        assert "\\n" not in str(exc)


@pytest.mark.parametrize("command", of_kind("recipe-run"))
def test_recipe_command_runs(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_recipe_command(command, parse_only=False)


@pytest.mark.parametrize("command", of_kind("recipe-env"))
def test_recipe_command_with_fields_from_the_environment_runs(command, tmp_path, monkeypatch):
    """`HFTRAIN_<FIELD>=value python recipes/X.py ...`: the variables set as the shell would, then the recipe."""
    monkeypatch.chdir(tmp_path)
    assignments = re.match(r"^((?:HFTRAIN_\w+=\S+ )+)", command).group(1)
    for assignment in assignments.split():
        monkeypatch.setenv(*assignment.split("=", 1))
    _, name, argv = split_recipe_command(command[len(assignments) :])
    parsed = run_recipe(name, argv, parse_only=True)
    for assignment in assignments.split():  # each variable reached its field, and the run records it as env
        variable, value = assignment.split("=", 1)
        field = variable.removeprefix("HFTRAIN_").lower()
        owner = next(p for p in parsed if hasattr(p, field))
        assert str(getattr(owner, field)) == str(type(getattr(owner, field))(value))
        assert owner.hftrain_config_sources[field] == "env"
    check_recipe_command(command[len(assignments) :], parse_only=False)


@pytest.mark.parametrize("command", of_kind("recipe-parse"))
def test_other_recipes_commands_parse(command, tmp_path, monkeypatch):
    """diffusion.py and grpo.py train in their owners' tests; here their README commands must parse and resolve."""
    monkeypatch.chdir(tmp_path)
    check_recipe_command(command, parse_only=True)


# -- hftrain runs, tune, push ---------------------------------------------------------------------------------------
def demo_database(path: Path) -> None:
    """Runs like the README's demo: three in experiment `arithmetic` (tagged team=nlp) and one in `sft-lr`."""
    from hftrain.tracking.store import TrackerStore

    with TrackerStore(str(path)) as store:
        for lr in ("0.003", "0.001", "0.0003"):
            run = store.create_run(
                "arithmetic",
                f"tiny-lm-lr{lr}",
                params={"args.learning_rate": float(lr)},
                tags={"team": "nlp"},
                output_dir=f"/tmp/trk/demo/lr{lr}",
            )
            for step in (10, 20, 30, 40):
                values = {"loss": 5.0 - step * float(lr), "eval_loss": 5.1 - step * float(lr), "grad_norm": 1.0}
                store.log_metrics(run, step, {**values, "learning_rate": float(lr)})
            store.set_status(run, "finished")
        run = store.create_run("sft-lr", "trial-0", params={"trial.learning_rate": 1e-3})
        store.log_metrics(run, 2, {"eval_loss": 4.0})
        store.set_status(run, "finished")


def hftrain_cli(command: str) -> int:
    from hftrain.cli import main

    return main(shlex.split(command)[1:])


@pytest.mark.parametrize("command", of_kind("runs"))
def test_runs_command(command, tmp_path, monkeypatch, capsys):
    demo_database(tmp_path / "runs.db")
    monkeypatch.setenv("HFTRAIN_TRACKER_DB", str(tmp_path / "runs.db"))
    monkeypatch.chdir(tmp_path)
    assert hftrain_cli(command) == 0, capsys.readouterr().err


def test_runs_serve_starts_and_stops(tmp_path):
    (command,) = of_kind("runs-serve")
    demo_database(tmp_path / "runs.db")
    env = {**os.environ, "HFTRAIN_TRACKER_DB": str(tmp_path / "runs.db")}
    argv = [sys.executable, "-m", "hftrain.cli", *shlex.split(command)[1:], "--port", "0"]  # any free port
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as server:
        try:
            first = server.stdout.readline()
            assert first.startswith("serving ") and "http://127.0.0.1:" in first, server.stderr.read()
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_push_command_without_a_run_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for command in of_kind("push"):
        assert hftrain_cli(command) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "push:" in errors[0]


def readme_search_space() -> str:
    text = (REPO / "README.md").read_text()
    return re.search(r"### Search space\n\n```yaml\n(.*?)```", text, re.S).group(1)


def test_tune_commands_and_the_best_config(tmp_path, monkeypatch, capsys):
    """The README's two tune commands (one trial instead of 20, tiny recipe runs), then training the best config."""
    from hftrain.tune import main as tune_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(readme_search_space())
    for command in of_kind("tune"):
        argv = _absolute(shlex.split(command.replace("--n_trials 20", "--n_trials 1")))[2:]
        assert tune_main([*argv, *shlex.split(SMALL["sft"])]) == 0, capsys.readouterr().err
    best = tmp_path / "outputs" / "tune" / "sft-lr" / "best_config.yaml"
    for command in of_kind("best-config"):
        _, name, argv = split_recipe_command(command.replace("<tune_dir>", str(best.parent)))
        trainer, _ = run_recipe(name, [*argv, *shlex.split(SMALL[name]), "--output_dir", str(tmp_path / "best")])
        assert trainer.state.global_step == 2


# -- benches, scripts -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", of_kind("bench"))
def test_bench_command_flags_exist(command):
    """The benches measure for minutes; their README flags must be flags the script defines."""
    script = REPO / re.search(r"bench/\w+\.py", command).group(0)
    source = script.read_text()
    for flag in re.findall(r"(?<=\s)--[\w-]+", command):
        assert f'"{flag}"' in source, f"{script.name} has no {flag}"


def test_gpu_scripts_parse_and_know_their_flags():
    """scripts/gpu_check.sh and fetch_gpu_wheels.sh run on the GPU machine (their owner's dry run is in CI)."""
    for command in of_kind("gpu-script"):
        script = REPO / re.search(r"scripts/\w+\.sh", command).group(0)
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        for flag in re.findall(r"(?<=\s)--[\w-]+", command):
            assert flag in script.read_text() or flag in (REPO / "scripts" / "gpu_check.py").read_text()


def test_quickstart_torch_variant_is_read_by_the_installer():
    """`HFTRAIN_TORCH=torch bash scripts/quickstart.sh` installs another torch from the index: not run offline."""
    assert of_kind("quickstart-torch-variant")
    assert "HFTRAIN_TORCH" in (REPO / "scripts" / "install.sh").read_text()


def run_script(argv: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "HFTRAIN_TRACKER_DB": str(tmp_path / "runs.db")}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_quickstart_usage_line_runs(tmp_path):
    """`bash scripts/quickstart.sh --max_steps 200` (its usage line; the README's has no flags), with small counts:
    the recipe's flags reach the recipe, never pip, and nothing needs the network."""
    assert {c.split()[1] for c in of_kind("script")} == {"scripts/quickstart.sh", "scripts/test.sh"}
    small = [*shlex.split(SMALL["sft"]), "--output_dir", str(tmp_path / "quick")]
    result = run_script(["bash", "scripts/quickstart.sh", "--max_steps", "200", *small], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out exact match after training" in result.stdout


def test_test_script_usage_line_runs(tmp_path):
    """`bash scripts/test.sh -k tracker`, on one small tracker test instead of the whole suite."""
    result = run_script(
        ["bash", "scripts/test.sh", "tests/test_tracker_store.py", "-k", "heartbeat", "-q", "-p", "no:cacheprovider"],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# -- one line, exit 2, through real processes -----------------------------------------------------------------------
def one_error_line(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


def test_recipe_help(capsys):
    """`python recipes/sft.py --help` lists every field (a literal % in a help text once crashed it); a bad flag with
    one process is tests/test_recipe_sft.py's, with two processes below."""
    with pytest.raises(SystemExit) as exit_info:
        run_recipe("sft", ["--help"], parse_only=True)
    printed = capsys.readouterr()
    assert exit_info.value.code == 0 and printed.out.startswith("usage:")
    assert "at least 10% of the median" in " ".join(printed.out.split())


def test_a_bad_flag_with_two_processes_is_one_line(tmp_path):
    """The README's two-process launch: rank 0 prints the recipe's line, the launcher adds no traceback."""
    argv = [
        sys.executable,
        "-m",
        "hftrain.launch",
        "--config_file",
        "accelerate_configs/cpu_ddp.yaml",
        "recipes/sft.py",
        "--max_steps",
        "ten",
    ]
    assert "--max_steps" in one_error_line(run_script(argv, tmp_path))


# -- the troubleshooting table says what the code prints --------------------------------------------------------
def troubleshooting_rows() -> list[tuple[str, str]]:
    """(example line, catalogue case id) of each row of the README's troubleshooting table that names a case."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Troubleshooting: the bad-input catalogue") :]
    section = section[: section.index("\n### ", 10)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`[\w-]+`", cells[3]) and cells[1].startswith("`error:"):
            rows.append((cells[1].strip("`"), cells[3].strip("`")))
    return rows


def _catalogue_case(case_id: str):
    import test_bad_inputs as catalogue  # tests/ is on sys.path under pytest

    for case in catalogue.RECIPE_CASES:
        if case.id == case_id:
            return lambda tmp, monkeypatch: (
                case.prepare and case.prepare(tmp, monkeypatch),
                catalogue.run_case(case, tmp),
            )
    for name, build, _ in catalogue.TRAINER_CASES:
        if name == case_id:
            return lambda tmp, monkeypatch: build(tmp)
    raise AssertionError(f"README names case {case_id!r}, which tests/test_bad_inputs.py does not have")


@pytest.mark.parametrize("example, case_id", troubleshooting_rows(), ids=[r[1] for r in troubleshooting_rows()])
def test_troubleshooting_example_is_what_the_case_prints(example, case_id, tmp_path, monkeypatch, capsys):
    import test_bad_inputs as catalogue

    (tmp_path / "world").mkdir()
    database = catalogue.make_tracker_database(tmp_path / "runs.db")
    world = catalogue.build_world(tmp_path / "world", database, monkeypatch)
    run = _catalogue_case(case_id)
    capsys.readouterr()
    try:
        run(world, monkeypatch)
    except HFTrainError as exc:
        from hftrain.errors import report_user_error

        report_user_error(exc)
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    position = 0
    for fragment in example.split("…"):  # "…" stands for a path or a list; the rest is verbatim, in order
        found = line.find(fragment, position)
        assert found >= 0, f"README: {example}\nprinted: {line}"
        position = found + len(fragment)
