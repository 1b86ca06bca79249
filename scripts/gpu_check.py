"""The one prepared GPU check, driven by scripts/gpu_check.sh (which installs the carried wheels first).

Parts, each in its own process with its own time limit; each prints one `RESULT` line:

  a  throughput  bench/throughput.py: hftrain SFT vs plain TRL, bf16, Qwen2.5-0.5B shape: tokens/s, MFU, ratio,
                 host reads per step; then each optimization level (tokens/s and peak memory vs no preset)
  b  qlora       recipes/sft.py on a Qwen2.5-0.5B-shaped model saved locally: 4-bit NF4 base + LoRA, 40 steps:
                 the loss falls; peak memory
  c  fsdp        accelerate launch --config_file accelerate_configs/fsdp.yaml --num_processes 1 recipes/sft.py:
                 4 steps with checkpoints at 2 and 4, then a second launch resumes from checkpoint-4 to step 6
  d  diffusion   bench/overhead.py --kinds diffusion: the recipe's default UNet and batch for 200 steps, images/s
                 of hftrain's DiffusionTrainer vs a plain accelerate loop
  e  nan-skip    hftrain.SFTTrainer with the GPU defaults (bf16, fused AdamW): a NaN loss injected at step 3 is kept
                 out on the device (found_inf): weights unchanged by that step, training goes on
  f  overhead    (not in the default set) bench/overhead.py --kinds trainer sft dpo on the 0.5B model in bf16

The output ends with a summary table whose rows have the README's Measured columns (what | command | result |
target), written also to OUT/summary.md, with OUT/summary.json and the full log (OUT: --out, else $OUT, else
/tmp/hftrain-gpu-check/out). `--dry-run` (CI, no GPU, no network) imports everything, checks the wheel plan and any
fetched wheels, parses every part's arguments with the real parsers and builds every part's configuration.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from typing import Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
TREE_BUDGET_MIB = 64  # what one device call carries: the working tree plus the wheels

# Packages carried as wheels (Python 3.12, manylinux x86_64): what the GPU machine lacks, plus transformers and
# peft, whose versions there (transformers 5.17) predate what hftrain is tested with (the diffusion loop reads
# `activation_checkpointing`, a field transformers added later). Pinned to the versions installed here, so the GPU
# runs what CI tests, on the machine's own torch and accelerate; the fallback pin is for a package CI lacks.
CARRIED = (
    ("transformers", "transformers", None),
    ("peft", "peft", None),
    ("trl", "trl", None),
    ("datasets", "datasets", None),
    ("diffusers", "diffusers", None),
    ("bitsandbytes", "bitsandbytes", "0.50.2"),  # hftrain's optional qlora extra: CI does not install it
    ("liger-kernel", "liger_kernel", "0.8.5"),  # the aggressive/extreme presets' kernels
    ("dill", "dill", None),  # datasets' pure-Python dependencies the image lacks
    ("multiprocess", "multiprocess", None),
    ("importlib-metadata", "importlib_metadata", None),  # declared by diffusers
)
# What the device machine's image already holds among the carried packages' dependencies (the device kind's
# package list, read 2026-11): a requirement outside this set and CARRIED would be missing there.
ON_IMAGE = frozenset(
    """accelerate aiohttp certifi charset-normalizer filelock fsspec hf-xet httpx huggingface-hub idna jinja2 numpy
    packaging pandas peft pillow psutil pyarrow python-dateutil pyyaml regex requests safetensors scikit-learn scipy
    sacrebleu tokenizers torch tqdm transformers triton typer typing-extensions urllib3 xxhash zipp
    nvidia-ml-py""".split()
)
# bitsandbytes ships one CUDA library per toolkit (~40 MiB in all); the image's torch is built for CUDA 13.0.
KEEP_BNB_CUDA = os.environ.get("HFTRAIN_GPU_CUDA", "130,132").split(",")

LEVELS = ["none", "light", "standard", "aggressive", "extreme"]
PARTS = {
    "a": ("throughput", 330),
    "b": ("qlora", 150),
    "c": ("fsdp", 180),
    "d": ("diffusion", 100),
    "e": ("nan-skip", 60),
    "f": ("overhead", 300),
}
DEFAULT_PARTS = "a,b,c,d,e"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- wheels ------------------------------------------------------------------------------------------------------
def wheel_plan() -> list[str]:
    """`name==version` for each carried package."""
    specs = []
    for dist, _, fallback in CARRIED:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = fallback
        specs.append(f"{dist}=={version}" if version else dist)
    return specs


def _wheel_files(folder: str) -> dict[str, str]:
    """{normalised distribution name: wheel path} in `folder`."""
    found = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.whl"))):
        found.setdefault(_normal(os.path.basename(path).split("-")[0]), path)
    return found


def _wheel_requirements(path: str) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        text = wheel.read(metadata).decode("utf-8")
    return [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]


def prune_bitsandbytes(path: str, keep: list[str]) -> tuple[int, int]:
    """Rewrite bitsandbytes' wheel without the native libraries of other CUDA/ROCm/XPU versions (and their RECORD
    lines), so the carried tree stays small. Returns (bytes before, bytes after)."""
    before = os.path.getsize(path)
    wanted = {f"libbitsandbytes_cuda{v}.so" for v in keep} | {"libbitsandbytes_cpu.so"}

    def dropped(name: str) -> bool:
        base = name.rsplit("/", 1)[-1]
        return base.startswith("libbitsandbytes_") and base.endswith(".so") and base not in wanted

    temporary = path + ".tmp"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if dropped(item.filename):
                continue
            data = source.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = [line for line in data.decode().splitlines() if not dropped(line.split(",", 1)[0])]
                data = ("\n".join(lines) + "\n").encode()
            target.writestr(item, data)
    os.replace(temporary, path)
    return before, os.path.getsize(path)


def tree_bytes() -> int:
    """Bytes of what a device call sends besides the wheels: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=False,
    ).stdout.split(b"\0")
    return sum(
        os.path.getsize(os.path.join(REPO, p.decode()))
        for p in listed
        if p and os.path.isfile(REPO + "/" + p.decode())
    )


def check_wheels(folder: str, finish: bool = False) -> list[str]:
    """Problems with the fetched wheels (empty: ready to carry). `finish`: prune bitsandbytes first."""
    problems, files = [], _wheel_files(folder)
    if finish and "bitsandbytes" in files:
        before, after = prune_bitsandbytes(files["bitsandbytes"], KEEP_BNB_CUDA)
        print(
            f"bitsandbytes: kept CUDA {', '.join(KEEP_BNB_CUDA)} libraries: "
            f"{before / 2**20:.1f} -> {after / 2**20:.1f} MiB"
        )
    carried = {_normal(d) for d, _, _ in CARRIED}
    for spec in wheel_plan():
        name, _, version = spec.partition("==")
        path = files.get(_normal(name))
        if path is None:
            problems.append(f"{spec}: no wheel in {folder}")
        elif version and f"-{version}-" not in os.path.basename(path):
            problems.append(f"{spec}: {os.path.basename(path)} is another version")
        else:
            for requirement in _wheel_requirements(path):
                dependency = _normal(re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0])
                if dependency not in carried and dependency not in ON_IMAGE:
                    problems.append(f"{name} needs {requirement}, which is neither carried nor on the GPU image")
    extra = set(files) - carried
    if extra:
        problems.append(f"wheels outside the plan in {folder}: {', '.join(sorted(extra))} (two versions stop pip)")
    wheels = sum(os.path.getsize(p) for p in glob.glob(os.path.join(folder, "*.whl")))
    total = wheels + tree_bytes()
    print(
        f"wheels {wheels / 2**20:.1f} MiB + working tree = {total / 2**20:.1f} MiB "
        f"(a device call carries {TREE_BUDGET_MIB} MiB)"
    )
    if total > TREE_BUDGET_MIB * 2**20:
        problems.append(f"{total / 2**20:.1f} MiB is over the {TREE_BUDGET_MIB} MiB a device call carries")
    return problems


def installed_mismatches() -> list[str]:
    """On the GPU machine: each carried package's requirements against what is installed there."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    problems = []
    for dist, _, _ in CARRIED:
        try:
            requires = importlib.metadata.requires(dist) or []
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{dist} is not installed")
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            try:
                version = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                problems.append(f"{dist} needs {requirement}: not installed")
                continue
            if requirement.specifier and Version(version) not in requirement.specifier:
                problems.append(f"{dist} needs {requirement}: {requirement.name} {version} is installed")
    return problems


# -- shared pieces -----------------------------------------------------------------------------------------------
def qwen_config(tokenizer):
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import throughput

    return throughput.model_config(False, tokenizer)


def qwen_model_dir(work: str) -> str:
    """A Qwen2.5-0.5B-shaped model with random weights saved as a local model folder (bf16) with the byte
    tokenizer, so the recipes load it like a Hub model, with no download."""
    folder = os.path.join(work, "qwen2.5-0.5b-shape")
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    import torch
    from transformers import Qwen2ForCausalLM

    from hftrain.builtin import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(qwen_config(tokenizer))
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def qlora_argv(model_dir: str, out: str) -> list[str]:
    return [
        "--model_name_or_path", model_dir, "--load_in_4bit", "true", "--use_peft", "true", "--lora_r", "16",
        "--output_dir", out, "--max_steps", "40", "--per_device_train_batch_size", "16", "--learning_rate", "2e-4",
        "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--logging_steps", "5", "--eval_strategy", "no",
        "--save_strategy", "no", "--bundled_train_size", "1000", "--bundled_eval_size", "16", "--report_to", "none",
        "--disable_tqdm", "true",
    ]  # fmt: skip


def fsdp_launch() -> list[str]:
    return [
        PYTHON, "-m", "accelerate.commands.launch", "--config_file",
        os.path.join(REPO, "accelerate_configs", "fsdp.yaml"), "--num_processes", "1",
        os.path.join(REPO, "recipes", "sft.py"),
    ]  # fmt: skip


def fsdp_argv(model_dir: str, out: str, steps: int) -> list[str]:
    return [
        "--model_name_or_path", model_dir, "--dtype", "float32", "--output_dir", out, "--max_steps", str(steps),
        "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1", "--eval_strategy", "no",
        "--per_device_train_batch_size", "8", "--bundled_train_size", "200", "--bundled_eval_size", "8",
        "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip


def throughput_argv(json_path: str) -> list[str]:
    return ["--levels", *LEVELS, "--level_steps", "20", "--json", json_path]


def diffusion_argv(json_path: str) -> list[str]:
    return [
        "--kinds", "diffusion", "--runs", "2", "--steps", "200", "--warmup", "10", "--image_batch", "64",
        "--logging_steps", "50", "--json", json_path,
    ]  # fmt: skip


def overhead_argv(json_path: str) -> list[str]:
    return ["--kinds", "trainer", "sft", "dpo", "--runs", "2", "--steps", "25", "--json", json_path]


def _peak_gib() -> Optional[float]:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


# -- the parts ---------------------------------------------------------------------------------------------------
def part_a(work: str, dry: bool) -> dict:
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import throughput

    path = os.path.join(work, "throughput.json")
    options = throughput.parse_args(throughput_argv(path))
    if dry:
        import torch
        from transformers import Qwen2ForCausalLM

        from hftrain import SFTConfig
        from hftrain.builtin import build_tokenizer
        from hftrain.launch import resolve_arguments

        config = throughput.model_config(False, build_tokenizer())
        with torch.device("meta"):
            params = sum(p.numel() for p in Qwen2ForCausalLM(config).parameters())
        presets = {}
        for level in options.levels[1:]:
            args = resolve_arguments(SFTConfig(output_dir=work, optimization_level=level, report_to="none"))
            presets[level] = len(args.hftrain_preset_report)
        per_token = throughput.flops_per_token(config, options.length)
        return {
            "ok": True,
            "line": f"Qwen2 {params / 1e6:.1f}M parameters, {per_token / 1e9:.2f} GFLOPs/token at {options.length}, "
            f"batch {options.batch}; levels {', '.join(options.levels)} resolve here ({presets} preset lines)",
        }
    _run([PYTHON, os.path.join(REPO, "bench", "throughput.py"), *throughput_argv(path)], PARTS["a"][1])
    with open(path, encoding="utf-8") as handle:
        summary = json.load(handle)
    trl_r, ours = summary["runs"][0], summary["runs"][1]
    levels = {r["level"]: r for r in summary["runs"][2:]}
    base = levels.get("none")

    def versus(r, key):
        return f"{r[key] / base[key]:.2f}x" if r.get(key) and base.get(key) else "n/a"

    level_text = "; ".join(
        f"{name} failed ({r['error']})"
        if r.get("error")
        else f"{name} {versus(r, 'tokens_per_s')} tokens/s, {versus(r, 'peak_gib')} memory"
        for name, r in levels.items()
        if base and name != "none"
    )
    reads = tuple(_reads(r.get("host_reads_per_step")) for r in (ours, trl_r))
    mfu = f"MFU {_pct(ours['mfu'])} vs {_pct(trl_r['mfu'])}"
    return {
        "ok": summary["ratio"] >= 0.98 and reads[0] == reads[1] and not any(r.get("error") for r in levels.values()),
        "line": f"hftrain {ours['tokens_per_s']:,.0f} vs TRL {trl_r['tokens_per_s']:,.0f} tokens/s, ratio "
        f"{summary['ratio']:.3f}; {mfu}; peak {_gib(ours['peak_gib'])}; host reads/step {reads[0]} vs {reads[1]}; "
        f"levels vs no preset: {level_text or 'not run'}",
        "rows": [
            (
                f"SFT throughput and MFU vs plain TRL ({summary['device']}, Qwen2.5-0.5B shape, bf16, batch "
                f"{summary['batch']} x {summary['length']})",
                "`bash scripts/gpu_check.sh` (a)",
                f"ratio **{summary['ratio']:.3f}**: hftrain {ours['tokens_per_s']:,.0f} tokens/s, MFU "
                f"{_pct(ours['mfu'])}; TRL {trl_r['tokens_per_s']:,.0f}, MFU {_pct(trl_r['mfu'])}; host reads per "
                f"step {reads[0]} vs {reads[1]}",
                "≥ 0.98, equal reads",
            ),
            (
                "optimization levels vs no preset (tokens/s, peak memory)",
                "`bash scripts/gpu_check.sh` (a)",
                f"no preset {base['tokens_per_s']:,.0f} tokens/s, {_gib(base['peak_gib'])}; {level_text}"
                if base and not base.get("error")
                else "not run",
                "faster or smaller",
            ),
        ],
    }


def _reads(per_step: Optional[list]) -> str:
    """Host reads per counted step: one number when every step had the same."""
    if not per_step:
        return "n/a"
    return str(per_step[0]) if len(set(per_step)) == 1 else "/".join(map(str, per_step))


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _gib(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f} GiB"


def part_b(work: str, dry: bool) -> dict:
    from hftrain import ModelArguments, ScriptArguments, SFTConfig
    from hftrain.config import HFTrainParser

    out = os.path.join(work, "qlora")
    default = os.path.join(REPO, "recipes", "configs", "sft_default.yaml")
    if dry:
        from peft import LoraConfig

        from hftrain.builtin import build_tokenizer
        from hftrain.peft_utils import quantization_config

        parser = HFTrainParser((ScriptArguments, SFTConfig, ModelArguments))
        argv = qlora_argv(os.path.join(work, "qwen2.5-0.5b-shape"), out)
        _, training_args, model_args = parser.parse_args_and_config(argv, base_config=default)
        bnb = quantization_config(model_args)
        lora = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, target_modules="all-linear")
        config = qwen_config(build_tokenizer())
        return {
            "ok": bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and training_args.max_steps == 40,
            "line": f"recipes/sft.py arguments parse; BitsAndBytesConfig(4-bit {bnb.bnb_4bit_quant_type}, compute "
            f"{bnb.bnb_4bit_compute_dtype}); LoRA r={lora.r} on all linear layers of a {config.num_hidden_layers}-"
            "layer Qwen2",
        }
    import torch

    model_dir = qwen_model_dir(work)
    sys.path.insert(0, os.path.join(REPO, "recipes"))
    import sft

    torch.cuda.reset_peak_memory_stats()
    trainer, _ = sft.main(qlora_argv(model_dir, out))
    peak = _peak_gib()
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    four_bit = sum(  # bitsandbytes' own layers (peft's LoRA wrapper of one has the same class name)
        type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes")
        for m in trainer.model.modules()
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    first, last = losses[0][1], losses[-1][1]
    return {
        "ok": last < first and four_bit > 0 and trainer.state.global_step == 40,
        "line": f"{four_bit} Linear4bit layers, {trainable / 1e6:.1f}M trainable (LoRA); loss {first:.3f} at step "
        f"{losses[0][0]} -> {last:.3f} at step {losses[-1][0]}; peak {_gib(peak)}",
        "rows": [
            (
                "QLoRA SFT on a GPU (4-bit NF4 + LoRA r=16, Qwen2.5-0.5B shape, 40 steps)",
                "`bash scripts/gpu_check.sh` (b)",
                f"loss {first:.2f} -> **{last:.2f}**, peak memory **{_gib(peak)}**",
                "loss falls",
            )
        ],
    }


def part_c(work: str, dry: bool) -> dict:
    out = os.path.join(work, "fsdp")
    model_dir = os.path.join(work, "qwen2.5-0.5b-shape")
    if dry:
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser

        sys.path.insert(0, os.path.join(REPO, "recipes"))
        import sft

        command = fsdp_launch()
        args = launch_command_parser().parse_args(command[3:] + fsdp_argv(model_dir, out, 4))
        args, _, _ = _validate_launch_command(args)
        parsed = sft.parse_args(args.training_script_args)
        return {
            "ok": bool(args.use_fsdp) and args.num_processes == 1 and str(args.fsdp_version) == "2",
            "line": f"accelerate reads fsdp.yaml: FSDP{args.fsdp_version}, {args.fsdp_auto_wrap_policy}, "
            f"{args.fsdp_state_dict_type}, {args.num_processes} process; recipe saves every "
            f"{parsed[1].save_steps} steps to step {parsed[1].max_steps}, then resumes to 6",
        }
    model_dir = qwen_model_dir(work)
    first = _run(fsdp_launch() + fsdp_argv(model_dir, out, 4), 100)
    marker = os.path.join(out, "checkpoint-4", "hftrain_checkpoint.json")
    second = _run(fsdp_launch() + fsdp_argv(model_dir, out, 6), 100)
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    resumed = "resuming from" in second and "checkpoint-4" in second
    steps = sorted({e["step"] for e in state["log_history"] if "loss" in e})
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out)  # the full state dict gathered on save
    ok = bool(first) and os.path.isfile(marker) and resumed and state["global_step"] == 6
    return {
        "ok": ok,
        "line": f"launch 1: steps 1-4, checkpoint-4 complete ({os.path.isfile(marker)}); launch 2 resumed "
        f"({resumed}) to step {state['global_step']}; logged steps {steps}; saved model loads "
        f"({sum(p.numel() for p in loaded.parameters()) / 1e6:.0f}M parameters)",
        "rows": [
            (
                "FSDP2 (`accelerate_configs/fsdp.yaml`) on one GPU: save and resume",
                "`bash scripts/gpu_check.sh` (c)",
                f"checkpoint-4 complete, second launch resumed to step {state['global_step']}, saved model loads"
                if ok
                else "failed (see the log)",
                "resumes",
            )
        ],
    }


def part_d(work: str, dry: bool) -> dict:
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import overhead

    path = os.path.join(work, "diffusion.json")
    options = overhead.parse_args(diffusion_argv(path))
    if dry:
        setup = overhead.DiffusionSetup(options)
        params = sum(p.numel() for p in setup.unet().parameters())
        return {
            "ok": options.kinds == ["diffusion"] and options.steps == 200,
            "line": f"digits UNet {options.channels} ({params / 1e6:.2f}M parameters, class-conditional), batch "
            f"{options.image_batch}, {options.steps} steps x {options.runs} rounds, {len(setup.rows)} images",
        }
    _run([PYTHON, os.path.join(REPO, "bench", "overhead.py"), *diffusion_argv(path)], PARTS["d"][1])
    with open(path, encoding="utf-8") as handle:
        figures = json.load(handle)["figures"]["diffusion"]
    ratio = figures["hftrain_images_per_s"] / figures["upstream_images_per_s"]
    return {
        "ok": ratio >= 0.98,
        "line": f"hftrain {figures['hftrain_images_per_s']:,.0f} vs plain {figures['upstream_images_per_s']:,.0f} "
        f"images/s, ratio {ratio:.3f}",
        "rows": [
            (
                "diffusion default (UNet [32, 64, 64], batch 64, 200 steps) vs a plain accelerate loop on a GPU",
                "`bash scripts/gpu_check.sh` (d)",
                f"images/s ratio **{ratio:.3f}** ({figures['hftrain_images_per_s']:,.0f} vs "
                f"{figures['upstream_images_per_s']:,.0f})",
                "≥ 0.98",
            )
        ],
    }


def nan_skip_trainer(work: str, nan_at: int = 3, steps: int = 8):
    """hftrain's SFTTrainer at its defaults on this machine, with a NaN loss at step `nan_at` and weight snapshots."""
    import torch
    from transformers import TrainerCallback

    import hftrain
    from hftrain.builtin import arithmetic_splits, build_tiny_causal_lm, build_tokenizer

    class Snapshots(TrainerCallback):
        def __init__(self):
            self.weights = {}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.weights[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    class NaNAt(hftrain.SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return loss * float("nan") if self.state.global_step + 1 == nan_at else loss

    tokenizer = build_tokenizer()
    train, _ = arithmetic_splits(256, 4, seed=0)
    args = hftrain.SFTConfig(
        output_dir=os.path.join(work, "nan-skip"),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=4,  # step 3 is not a logging step: the skip must not wait for a read
        save_strategy="no",
        report_to="none",
        max_length=32,
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
    )
    snapshots = Snapshots()
    trainer = NaNAt(
        build_tiny_causal_lm(tokenizer, hidden_size=64),
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[snapshots],
    )
    return trainer, snapshots, torch


def part_e(work: str, dry: bool) -> dict:
    trainer, snapshots, torch = nan_skip_trainer(work)
    from hftrain.monitor import MonitorCallback

    monitor = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, MonitorCallback))
    optim = getattr(trainer.args.optim, "value", trainer.args.optim)
    if dry:
        return {
            "ok": trainer.args.monitor_nonfinite_action == "skip",
            "line": f"SFTTrainer with monitor_nonfinite_action={trainer.args.monitor_nonfinite_action!r}, optim "
            f"{optim}, bf16={trainer.args.bf16}; NaN at step 3, logging every 4 steps",
        }
    trainer.train()
    weights = snapshots.weights
    unchanged = all(torch.equal(weights[2][k], weights[3][k]) for k in weights[2])
    moved_on = not all(torch.equal(weights[3][k], weights[4][k]) for k in weights[3])
    finite = all(bool(torch.isfinite(v).all()) for v in trainer.model.state_dict().values() if v.is_floating_point())
    on_device = monitor._reads_deferred(trainer.args)
    ok = unchanged and moved_on and finite and monitor.skipped_steps == [3]
    how = "kept out on the device (found_inf)" if on_device else "dropped after a host read"
    return {
        "ok": ok,
        "line": f"optim {optim}, bf16={trainer.args.bf16}: NaN at step 3 {how}; weights unchanged by step 3: "
        f"{unchanged}; training went on: {moved_on}; skipped steps {monitor.skipped_steps}; all finite: {finite}",
        "rows": [
            (
                "monitor skips an injected NaN on a GPU (fused AdamW, bf16)",
                "`bash scripts/gpu_check.sh` (e)",
                f"step 3 {how}, weights unchanged, training went on to step {trainer.state.global_step}"
                if ok
                else "failed (see the log)",
                "skipped",
            )
        ],
    }


def part_f(work: str, dry: bool) -> dict:
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import overhead

    path = os.path.join(work, "overhead.json")
    options = overhead.parse_args(overhead_argv(path))
    if dry:
        return {"ok": True, "line": f"kinds {options.kinds}, {options.runs} rounds x {options.steps} steps"}
    _run([PYTHON, os.path.join(REPO, "bench", "overhead.py"), *overhead_argv(path)], PARTS["f"][1])
    with open(path, encoding="utf-8") as handle:
        figures = json.load(handle)["figures"]
    text = ", ".join(f"{k} {v['ratio']:.3f}" for k, v in figures.items())
    return {
        "ok": all(v["ratio"] <= 1.02 for v in figures.values()),
        "line": f"step-time ratios hftrain/upstream (0.5B, bf16): {text}",
        "rows": [
            (
                "step-time overhead on a GPU (Qwen2.5-0.5B shape, bf16) vs Trainer, SFTTrainer, DPOTrainer",
                "`bash scripts/gpu_check.sh --parts f`",
                text,
                "≤ 1.02",
            )
        ],
    }


RUNNERS: dict[str, Callable[[str, bool], dict]] = {
    "a": part_a,
    "b": part_b,
    "c": part_c,
    "d": part_d,
    "e": part_e,
    "f": part_f,
}


def _run(command: list[str], timeout: int) -> str:
    """Run a step of a part, its output passed through; its stdout returned; a failure raises."""
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(result.stdout[-6000:])
    sys.stderr.write(result.stderr[-6000:])
    if result.returncode != 0:
        raise RuntimeError(
            f"{os.path.basename(command[1] if command[1] != '-m' else command[2])} exited with {result.returncode}"
        )
    return result.stdout


# -- driver ------------------------------------------------------------------------------------------------------
def run_part(key: str, work: str, json_path: str) -> None:
    """The body of one part, in this (child) process; writes its result to `json_path`."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    start = time.perf_counter()
    try:
        result = RUNNERS[key](work, False)
    except Exception as exc:  # reported in the table; the other parts still run
        import traceback

        traceback.print_exc()
        result = {"ok": False, "line": f"error: {type(exc).__name__}: {str(exc)[:300]}"}
    result["seconds"] = time.perf_counter() - start
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


def gpu_run(parts: list[str], work: str, out: str) -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; use --dry-run to check the setup without one", file=sys.stderr)
        return 2
    problems = installed_mismatches()
    for problem in problems:
        print(f"gpu_check: warning: {problem}")
    device = torch.cuda.get_device_name(0)
    versions = {d: importlib.metadata.version(d) for d in ("torch", "transformers", "trl", "accelerate", "peft")}
    print(f"gpu_check: {device}; " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
    results, started = {}, time.perf_counter()
    for key in parts:
        name, limit = PARTS[key]
        path = os.path.join(work, f"part-{key}.json")
        print(f"\n=== part {key} ({name}), limit {limit} s", flush=True)
        try:
            subprocess.run(
                [PYTHON, os.path.abspath(__file__), "--part", key, "--workdir", work, "--result", path],
                cwd=REPO,
                timeout=limit,
                check=False,
            )
            with open(path, encoding="utf-8") as handle:
                results[key] = json.load(handle)
        except subprocess.TimeoutExpired:
            results[key] = {"ok": False, "line": f"timed out after {limit} s", "seconds": limit}
        except OSError as exc:
            results[key] = {"ok": False, "line": f"no result ({exc})", "seconds": 0.0}
        r = results[key]
        print(f"RESULT {key} {name}: {'ok' if r['ok'] else 'FAILED'} ({r['seconds']:.0f} s) | {r['line']}", flush=True)
    total = time.perf_counter() - started
    return summarize(results, device, versions, total, out)


def summarize(results: dict, device: str, versions: dict, total: float, out: str) -> int:
    lines = [
        f"GPU check on {device} ({', '.join(f'{k} {v}' for k, v in versions.items())}), {total / 60:.1f} min",
        "",
        "| part | status | seconds | result |",
        "|---|---|---|---|",
    ]
    for key, r in results.items():
        lines.append(f"| {key} {PARTS[key][0]} | {'ok' if r['ok'] else 'FAILED'} | {r['seconds']:.0f} | {r['line']} |")
    lines += [
        "",
        "Rows for the README's Measured table:",
        "",
        "| what | command | result | target |",
        "|---|---|---|---|",
    ]
    for r in results.values():
        for row in r.get("rows", []):
            lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines)
    print("\n" + text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump({"device": device, "versions": versions, "seconds": total, "parts": results}, handle, indent=1)
    return 0 if all(r["ok"] for r in results.values()) else 1


def dry_run(parts: list[str], work: str, wheels: str) -> int:
    """No GPU, no network: imports, the wheel plan (and fetched wheels, if any), every part's arguments and
    configuration."""
    failures = 0
    for module in ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "diffusers", "hftrain"):
        importlib.import_module(module)
    versions = {d: importlib.metadata.version(d) for d in ("torch", "transformers", "trl", "accelerate", "peft")}
    print("dry-run imports: ok (" + ", ".join(f"{k} {v}" for k, v in versions.items()) + ")")
    print("dry-run wheel plan (Python 3.12, manylinux x86_64): " + " ".join(wheel_plan()))
    if glob.glob(os.path.join(wheels, "*.whl")):
        problems = check_wheels(wheels)
        for problem in problems:
            print(f"dry-run wheels: {problem}")
        failures += bool(problems)
        print(f"dry-run wheels in {wheels}: {'ok' if not problems else 'PROBLEMS'}")
    else:
        print(f"dry-run wheels: none fetched in {wheels} (bash scripts/fetch_gpu_wheels.sh before a GPU run)")
    for key in parts:
        try:
            result = RUNNERS[key](work, True)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            result = {"ok": False, "line": f"error: {type(exc).__name__}: {exc}"}
        failures += not result["ok"]
        print(f"dry-run part {key} ({PARTS[key][0]}): {'ok' if result['ok'] else 'FAILED'} | {result['line']}")
    print(f"dry-run: {'ok' if not failures else f'{failures} problem(s)'}")
    return 1 if failures else 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="no GPU: check imports, wheels, arguments, configs")
    parser.add_argument("--parts", default=DEFAULT_PARTS, help=f"comma-separated, from {','.join(PARTS)}")
    parser.add_argument("--workdir", default="/tmp/hftrain-gpu-check", help="scratch folder (emptied first)")
    parser.add_argument("--out", default=None, help="summary.md/json go here (default: $OUT, else WORKDIR/out)")
    parser.add_argument("--wheels", default=os.path.join(REPO, ".gpu_wheels"), help="carried wheels folder")
    parser.add_argument("--wheel-plan", action="store_true", help="print name==version per carried wheel")
    parser.add_argument("--finish-wheels", metavar="DIR", help="prune bitsandbytes in DIR and check the wheels")
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)  # one part, in a child
    parser.add_argument("--result", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    options.parts = [p.strip() for p in options.parts.split(",") if p.strip()]
    unknown = [p for p in options.parts if p not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return options


def main(argv=None) -> int:
    options = parse_args(argv)
    if options.wheel_plan:
        print("\n".join(wheel_plan()))
        return 0
    if options.finish_wheels:
        problems = check_wheels(options.finish_wheels, finish=True)
        for problem in problems:
            print(f"problem: {problem}")
        return 1 if problems else 0
    if options.part:
        run_part(options.part, options.workdir, options.result)
        return 0
    if options.dry_run:
        return dry_run(options.parts, options.workdir, options.wheels)
    shutil.rmtree(options.workdir, ignore_errors=True)
    os.makedirs(options.workdir)
    out = options.out or os.environ.get("OUT") or os.path.join(options.workdir, "out")
    return gpu_run(options.parts, options.workdir, out)


if __name__ == "__main__":
    sys.exit(main())
