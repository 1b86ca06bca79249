"""`hftrain export OUTPUT_DIR --format onnx|torchscript`: a recipe's saved model as one ONNX or TorchScript file,
checked against the PyTorch model before anything is written.

OUTPUT_DIR is a recipe's output folder: a causal LM (sft, dpo, grpo, kto, pretrain), a seq2seq model (seq2seq), a
reward model (a sequence-classification head) or a diffusion pipeline (its UNet is exported; the sampling loop and
scheduler stay in Python, and the scheduler's config is copied beside it). A LoRA run's folder holds an adapter, not
a model: it is refused with the path of its merged model (`OUTPUT_DIR/merged`, written by `--merge_adapter true`),
so the exported file is always the model the folder it came from holds.

The export is written to a staging folder beside the destination, run (onnxruntime or `torch.jit.load`) on inputs of
shapes other than the one it was traced with, compared with PyTorch, and only then moved into place (default
`OUTPUT_DIR/export/<format>/`). A destination that holds files is replaced only with `--overwrite`. Bad input is
refused with one `error:` line (exit 2) before any model loads; a failed export or check is one `error:` line
(exit 1) and leaves nothing behind.

This module and `hftrain.export_sources` (what a folder holds) import only the standard library: `hftrain.cli`
registers the subcommand without loading torch; `hftrain.export_formats` (torch, transformers, diffusers) loads
when an export runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid

from .errors import ConfigError, HFTrainError, report_user_error
from .export_sources import ExportFailed, ExportRequest, inspect_model_folder

__all__ = ["add_export_parser", "run_export", "check_request", "export_to"]

FORMATS = ("onnx", "torchscript")
ONNX_EXPORTERS = ("dynamo", "legacy")
EXPORT_EXTRA = "pip install 'hftrain[export]'"
# Logits of real models reach tens; 1e-3 absolute is ~1e-4 relative, far above float32 reordering noise and far
# below what a shape baked into a trace or a wrongly exported op gives (differences of order 1).
DEFAULT_ATOL = 1e-3
FAILED_STATUS = 1


# -- command line ---------------------------------------------------------------------------------------------------
def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Register `export` on `sub`, the subparsers of the top-level `hftrain` parser."""
    export = sub.add_parser(
        "export",
        help="export a recipe's saved model to ONNX or TorchScript, checked against PyTorch",
        description="Export OUTPUT_DIR's model (causal LM, seq2seq, reward model or diffusion UNet) to "
        "OUTPUT_DIR/export/<format>/ and check its outputs against PyTorch's on a few inputs.",
    )
    export.add_argument("output_dir", help="a recipe's output folder (a LoRA run: its merged/ folder)")
    export.add_argument("--format", metavar="{onnx,torchscript}", help="what to write (required)")
    export.add_argument("--output", help="destination folder (default: OUTPUT_DIR/export/<format>)")
    export.add_argument("--overwrite", action="store_true", help="replace a destination that already holds files")
    export.add_argument(
        "--onnx_exporter",
        metavar="{dynamo,legacy}",
        help="torch.onnx's exporter: dynamo (torch.export, the default) or legacy (TorchScript-based: faster, "
        "deprecated by PyTorch)",
    )
    export.add_argument(
        "--atol", default=str(DEFAULT_ATOL), help=f"largest allowed |difference| (default {DEFAULT_ATOL:g})"
    )


def run_export(args: argparse.Namespace) -> int:
    """The `export` subcommand: check the request, export, check the result, move it into place, print each file
    written and the check's result. Returns the exit status."""
    try:
        request = check_request(args)
    except HFTrainError as exc:
        return report_user_error(exc)
    try:
        files, check_line = export_to(request)
    except ExportFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return FAILED_STATUS
    except HFTrainError as exc:
        return report_user_error(exc)
    for path in files:
        print(f"wrote {path} ({_size(os.path.getsize(path))})")
    print(check_line)
    return 0


def check_request(args: argparse.Namespace) -> ExportRequest:
    """Every refusal, before any model loads or any file is written."""
    if args.format not in FORMATS:
        got = "missing" if args.format is None else f"got {args.format!r}"
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}; {got}")
    exporter = args.onnx_exporter
    if exporter is not None and args.format != "onnx":
        raise ConfigError(f"--onnx_exporter: applies to --format onnx only, not {args.format}")
    if args.format == "onnx":
        exporter = exporter or ONNX_EXPORTERS[0]
        if exporter not in ONNX_EXPORTERS:
            raise ConfigError(f"--onnx_exporter: expected one of {', '.join(ONNX_EXPORTERS)}; got {exporter!r}")
    atol = _tolerance(args.atol)
    model = inspect_model_folder(args.output_dir)
    output = os.path.abspath(args.output or os.path.join(args.output_dir, "export", args.format))
    _check_destination(output, os.path.abspath(args.output_dir), args.overwrite)
    _check_packages(args.format, exporter)
    return ExportRequest(model, args.format, exporter, output, args.overwrite, atol)


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:  # also refuses nan
        raise ConfigError(f"--atol: expected a number > 0 (e.g. {DEFAULT_ATOL:g}); got {text!r}")
    return value


# -- destination and packages ---------------------------------------------------------------------------------------
def _check_destination(output: str, model_dir: str, overwrite: bool) -> None:
    if os.path.commonpath([output, model_dir]) == output:
        raise ConfigError(f"--output {output}: is the model folder or holds it; choose a folder of its own")
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"--output {output}: is a file; expected a folder")
    if os.path.isdir(output) and os.listdir(output) and not overwrite:
        raise ConfigError(f"--output {output}: already holds files; pass --overwrite to replace them")


def _check_packages(fmt: str, exporter: str | None) -> None:
    """ONNX export and its check need onnx and onnxruntime (and onnxscript for the dynamo exporter): the `export`
    extra, optional so a training install stays lean. TorchScript needs torch alone."""
    import importlib.util

    if fmt != "onnx":
        return
    wanted = ("onnx", "onnxruntime") + (("onnxscript",) if exporter == "dynamo" else ())
    missing = [name for name in wanted if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"--format onnx: needs {', '.join(missing)} (not installed): {EXPORT_EXTRA}")


# -- writing --------------------------------------------------------------------------------------------------------
def export_to(request: ExportRequest) -> tuple[list[str], str]:
    """Export and check in a staging folder beside `request.output`, then move it there. Returns the files written
    and the check's line; on any failure nothing is left behind and an existing destination is untouched."""
    from .export_formats import export_and_check  # lazy: torch, transformers, diffusers

    parent = os.path.dirname(request.output)
    created = _first_missing(parent)
    os.makedirs(parent, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would stay on the export once moved into place.
    staging = os.path.join(parent, f".hftrain-export-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(staging)
    try:
        check_line = export_and_check(request, staging)
        for source, name in request.model.sidecars:
            shutil.copyfile(source, os.path.join(staging, name))
        if os.path.isdir(request.output):  # only reached with --overwrite (or an empty folder)
            shutil.rmtree(request.output)
        os.replace(staging, request.output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise
    files = sorted(os.path.join(request.output, name) for name in os.listdir(request.output))
    return files, check_line


def _first_missing(path: str) -> str | None:
    """The outermost folder on the way to `path` that does not exist yet: what a failed export removes again."""
    missing = None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _size(n: float) -> str:
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"
