"""Recipes after `pip install`: `hftrain sft|dpo|...` runs the recipe files of recipes/, installed as the package
`hftrain.recipes` with their configs. Checked in process for every recipe, through two real processes under the
launcher, and in a fresh virtual environment with the checkout installed non-editable and run from elsewhere."""

import dataclasses
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from test_readme_commands import SMALL, _absolute, of_kind  # tests/ is on sys.path under pytest

from hftrain.cli import main as hftrain_main
from hftrain.recipes_cli import RECIPES

REPO = Path(__file__).resolve().parents[1]


def recipe_fields(name: str) -> set[str]:
    """Every init field of the dataclasses the recipe parses into (its bundled config, as this machine resolves it)."""
    parsed = importlib.import_module(f"hftrain.recipes.{name}").parse_args([])
    return {field.name for value in parsed for field in dataclasses.fields(value) if field.init}


def flags_in_help(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--(\w+)", text))


def test_the_package_list_names_every_package_and_every_recipe_is_a_subcommand():
    """pyproject.toml lists packages explicitly (a mapped package cannot be found by `find`): none may be missing."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "hftrain").rglob("__init__.py")}
    assert set(tool["packages"]) == on_disk | {"hftrain.recipes"}
    assert tool["package-dir"] == {"hftrain.recipes": "recipes"}
    assert tool["package-data"]["hftrain.recipes"] == ["configs/*.yaml"]
    assert set(RECIPES) == {p.stem for p in (REPO / "recipes").glob("*.py")} - {"__init__"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_subcommand_lists_every_field(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fields = recipe_fields(name)
    capsys.readouterr()
    assert hftrain_main([name, "--help"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"usage: hftrain {name} ")
    assert len(fields) > 50 and fields - flags_in_help(printed) == set()


def test_hftrain_sft_runs_the_recipe_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv_before = list(sys.argv)
    assert hftrain_main(["sft", *shlex.split(SMALL["sft"]), "--output_dir", "run"]) == 0
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["global_step"] == 2
    assert "held-out exact match after training" in capsys.readouterr().out
    assert sys.argv == argv_before  # the recipe read its flags from sys.argv; the caller's are back


def test_a_bad_flag_is_one_error_line_and_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert hftrain_main(["dpo", "--max_steps", "ten"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--max_steps" in errors[0]
    assert not (tmp_path / "outputs").exists()


# -- the README's commands (tests/test_readme_commands.py finds them; these run them) -------------------------------
@pytest.mark.parametrize("command", of_kind("recipe-subcommand"))
def test_readme_recipe_subcommand(command, tmp_path, monkeypatch, capsys):
    """Run in process with the tiny sizes appended (later flags win), from a scratch folder."""
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)[1:]
    assert hftrain_main([*argv, *shlex.split(SMALL.get(argv[0], ""))]) == 0, capsys.readouterr().err[-3000:]
    printed = capsys.readouterr().out
    assert printed.startswith("usage: hftrain") if "--help" in argv else "[hftrain] run record" in printed


@pytest.mark.slow  # two real processes over gloo, about a minute on 2 cores
@pytest.mark.parametrize("command", of_kind("recipe-subcommand-launch"))
def test_readme_launch_of_a_recipe_subcommand(command, tmp_path):
    """Several processes: the launcher starts `python -m hftrain.cli sft` in each; rank 0 alone reports."""
    argv = _absolute(shlex.split(command))
    name = argv[argv.index("hftrain.cli") + 1]
    argv = [sys.executable, *argv[1:], *shlex.split(SMALL[name]), "--output_dir", str(tmp_path / "run")]
    env = {**os.environ, "HFTRAIN_TRACKER_DB": str(tmp_path / "runs.db")}
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "x 2 process(es)" in result.stdout and result.stdout.count("[hftrain] run record") == 1
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["global_step"] == 2


# -- a fresh virtual environment ------------------------------------------------------------------------------------
def copy_checkout(destination: Path) -> None:
    """The checkout's files (tracked, and new ones git does not ignore): no build/ or egg-info leftovers."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for relative in filter(None, listed.split("\0")):
        source = REPO / relative
        if source.is_file():  # a tracked file someone deleted is not copied
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / relative)


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory) -> Path:
    """A new venv that sees this interpreter's packages (torch and the rest are not installed again), with hftrain
    installed from a copy of the checkout, not editable; the copy is deleted before anything runs."""
    root = tmp_path_factory.mktemp("fresh")
    copy_checkout(root / "source")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    result = subprocess.run([*install, "--quiet", str(root / "source")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.rmtree(root / "source")
    return venv


def run_installed(venv: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HFTRAIN_TRACKER_DB"] = str(cwd / "runs.db")
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # builds and installs a wheel, then trains 20 steps: about a minute
def test_pip_install_then_hftrain_sft_trains_outside_the_checkout(installed_venv, tmp_path):
    where = run_installed(
        installed_venv,
        [str(installed_venv / "bin" / "python"), "-c", "import hftrain.recipes.sft as s; print(s.DEFAULT_CONFIG)"],
        tmp_path,
    )
    config = Path(where.stdout.strip())
    assert config.is_file() and installed_venv in config.parents, where.stderr[-2000:]  # inside the venv

    result = run_installed(
        installed_venv,
        [str(installed_venv / "bin" / "hftrain"), "sft", "--max_steps", "20", "--output_dir", "run"],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "effective batch size 64 = 64 per device" in result.stdout  # the bundled default config was read
    assert "held-out exact match after training" in result.stdout
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 20 and (tmp_path / "run" / "model.safetensors").is_file()

    help_text = run_installed(installed_venv, [str(installed_venv / "bin" / "hftrain"), "sft", "--help"], tmp_path)
    assert help_text.returncode == 0 and help_text.stdout.startswith("usage: hftrain sft ")
    assert recipe_fields("sft") - flags_in_help(help_text.stdout) == set()
