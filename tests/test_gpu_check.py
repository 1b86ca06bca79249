"""scripts/gpu_check.sh: the CPU dry run CI runs (imports, wheel plan, every part's arguments and configuration,
nothing downloaded), the wheel checks on a fake wheel folder, and the summary's README-ready rows."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import gpu_check  # noqa: E402


def test_dry_run_passes_without_a_gpu_or_the_network(tmp_path):
    env = {
        **os.environ,
        "HFTRAIN_GPU_WHEELS": str(tmp_path / "no-wheels"),  # as in a fresh clone: nothing fetched
        "PIP_NO_INDEX": "1",  # anything that tried to download would fail
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), "--dry-run", "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "dry-run imports: ok" in out and "dry-run: ok" in out
    for spec in ("trl==", "datasets==", "diffusers==", "bitsandbytes=="):
        assert spec in out.split("dry-run wheel plan")[1].splitlines()[0]
    assert "none fetched" in out
    for key, name in (("a", "throughput"), ("b", "qlora"), ("c", "fsdp"), ("d", "diffusion"), ("e", "nan-skip")):
        assert f"dry-run part {key} ({name}): ok" in out
    assert "Qwen2 494.0M parameters" in out  # Qwen2.5-0.5B's shape
    assert "FSDP2, TRANSFORMER_BASED_WRAP, FULL_STATE_DICT, 1 process" in out
    assert not os.path.exists(tmp_path / "work" / "qwen2.5-0.5b-shape")  # no model built or saved


def test_unknown_part_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "gpu_check.py"), "--dry-run", "--parts", "a,z"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--parts: unknown z" in result.stderr


def _wheel(folder, name, version, files=(), requires=()):
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    metadata = f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as wheel:
        for file in files:
            wheel.writestr(file, b"x" * 1000)
        wheel.writestr(f"{info}/METADATA", metadata)
        record = [f"{f},sha256=abc,1000" for f in files] + [f"{info}/METADATA,,", f"{info}/RECORD,,"]
        wheel.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def test_wheel_checks_prune_bitsandbytes_and_name_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "tree_bytes", lambda: 1000)
    plan = {spec.partition("==")[0]: spec.partition("==")[2] for spec in gpu_check.wheel_plan()}
    folder = tmp_path / "wheels"
    folder.mkdir()
    libraries = [f"bitsandbytes/libbitsandbytes_{v}.so" for v in ("cpu", "cuda118", "cuda126", "cuda130", "rocm64")]
    for name, version in plan.items():
        files = libraries if name == "bitsandbytes" else [f"{name}/__init__.py"]
        _wheel(folder, name, version, files, requires=["torch>=2.4", "numpy"])
    assert gpu_check.check_wheels(str(folder), finish=True) == []
    with zipfile.ZipFile(next(folder.glob("bitsandbytes-*.whl"))) as wheel:
        names = wheel.namelist()
        record = wheel.read(next(n for n in names if n.endswith("RECORD"))).decode()
    kept = sorted(n.rsplit("/", 1)[1] for n in names if n.endswith(".so"))
    assert kept == ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"]
    assert "cuda118" not in record and "rocm64" not in record and "cuda130" in record

    next(folder.glob("dill-*.whl")).unlink()
    _wheel(folder, "trl", "0.0.1")  # a second version
    _wheel(folder, "flash-attn", "9.9", requires=["einops"])
    next(folder.glob("diffusers-*.whl")).unlink()
    _wheel(folder, "diffusers", plan["diffusers"], requires=["some-new-package>=1"])
    problems = "\n".join(gpu_check.check_wheels(str(folder)))
    assert f"dill=={plan['dill']}: no wheel" in problems
    assert "diffusers needs some-new-package>=1, which is neither carried nor on the GPU image" in problems
    assert "wheels outside the plan" in problems and "flash-attn" in problems


def test_carried_total_over_the_budget_is_a_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "tree_bytes", lambda: 65 * 2**20)
    (tmp_path / "w").mkdir()
    assert any("over the 64 MiB" in p for p in gpu_check.check_wheels(str(tmp_path / "w")))


def test_summary_rows_have_the_readme_columns(tmp_path, capsys):
    results = {
        "b": {
            "ok": True,
            "seconds": 61.0,
            "line": "loss 12.0 -> 2.1",
            "rows": [("QLoRA SFT on a GPU", "`bash scripts/gpu_check.sh` (b)", "loss 12.0 -> **2.1**", "loss falls")],
        },
        "c": {"ok": False, "seconds": 210.0, "line": "timed out after 210 s"},
    }
    status = gpu_check.summarize(results, "NVIDIA H200", {"torch": "2.11.0"}, 271.0, str(tmp_path))
    assert status == 1  # a failed part fails the check
    text = (tmp_path / "summary.md").read_text()
    assert (
        "| b qlora | ok | 61 | loss 12.0 -> 2.1 |" in text
        and "| c fsdp | FAILED | 210 | timed out after 210 s |" in text
    )
    assert "| what | command | result | target |" in text
    assert "| QLoRA SFT on a GPU | `bash scripts/gpu_check.sh` (b) | loss 12.0 -> **2.1** | loss falls |" in text
    assert json.loads((tmp_path / "summary.json").read_text())["parts"]["c"]["ok"] is False
    assert "GPU check on NVIDIA H200" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--wheel-plan"])
def test_wheel_plan_pins_what_ci_tests(flag):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "gpu_check.py"), flag], capture_output=True, text=True
    )
    specs = result.stdout.split()
    from importlib.metadata import version

    assert f"trl=={version('trl')}" in specs and f"datasets=={version('datasets')}" in specs
