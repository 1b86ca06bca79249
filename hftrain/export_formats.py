"""The torch side of `hftrain export`: load the model, wrap it to one tensor output, write ONNX (`torch.onnx.export`)
or TorchScript (`torch.jit.trace`), run the written file and compare it with PyTorch.

The graph is one forward pass: token ids (and mask) to logits for every position, with no KV cache; a generation
loop calls it once per new token. The UNet graph is one denoising step; the scheduler's loop stays in Python.
Batch and sequence lengths are dynamic axes; the check runs shapes other than the traced one, so a length baked
into the graph fails it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import ModelLoadError
from .export_sources import ExportFailed, ExportRequest, ModelFolder

_AUTO_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "sequence-classification": "AutoModelForSequenceClassification",
}
_RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torch.jit.load"}
_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
# (batch, length, left-padded first row): the traced example, then the shapes the check runs.
_EXAMPLE_SHAPE = (2, 8, False)
_CHECK_SHAPES = ((1, 5, False), (3, 11, True), (2, 16, True))


class SingleOutput(torch.nn.Module):
    """The model called with named inputs, returning the one tensor exporters write and the check compares."""

    def __init__(self, model: torch.nn.Module, input_names: tuple[str, ...], output_field: str):
        super().__init__()
        self.model, self.input_names, self.output_field = model, input_names, output_field

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(**dict(zip(self.input_names, inputs))), self.output_field)


@dataclass
class ExportSpec:
    module: SingleOutput
    axes: dict[str, dict[int, str]]  # named dynamic axes of each input and of the output
    output_name: str
    example: dict[str, torch.Tensor]
    checks: list[dict[str, torch.Tensor]]
    # An input whose zeros mark output rows nothing reads: a causal LM's left padding attends to nothing, so its
    # logits there are arbitrary and differ between runtimes.
    compare_where: str | None = None


def export_and_check(request: ExportRequest, folder: str) -> str:
    """Write the export and its `export.json` into `folder`; returns the check's line, or raises `ExportFailed`."""
    spec = load_spec(request.model, request.format)
    path = os.path.join(folder, _FILES[request.format])
    with warnings.catch_warnings():
        # The tracer warns about every Python branch on a shape; the check below is what tells whether the
        # trace generalises, on shapes other than the example's.
        warnings.simplefilter("ignore")
        try:
            if request.format == "onnx":
                write_onnx(spec, path, request.onnx_exporter)
            else:
                write_torchscript(spec, path)
        except Exception as exc:
            raise ExportFailed(_exporter_failure(request, exc)) from None
    runtime = _RUNTIMES[request.format]
    worst = check_export(spec, runner_for(request.format, path), request.atol, runtime)
    _write_manifest(folder, request, spec, worst)
    return (
        f"check passed: {runtime} matches PyTorch on {len(spec.checks)} inputs of new shapes, "
        f"max abs diff {worst:.2e} <= atol {request.atol:g}"
    )


def _exporter_failure(request: ExportRequest, exc: Exception) -> str:
    name = f"torch.onnx ({request.onnx_exporter} exporter)" if request.format == "onnx" else "torch.jit.trace"
    if request.format == "onnx":
        other = (
            f"--onnx_exporter {'legacy' if request.onnx_exporter == 'dynamo' else 'dynamo'} or --format torchscript"
        )
    else:
        other = "--format onnx"
    what = f"--format {request.format}: {name} could not export {request.model.class_name}"
    return f"{what}: {_first_line(exc)}; try {other}"


# -- models and inputs ----------------------------------------------------------------------------------------------
def load_spec(model: ModelFolder, fmt: str) -> ExportSpec:
    """The model in float32 and eval mode, wrapped, with the example and check inputs for its kind."""
    generator = torch.Generator().manual_seed(0)
    if model.kind == "unet":
        return _unet_spec(_load_unet(model), generator)
    network = _load_transformers(model, fmt)
    if model.kind == "seq2seq":
        return _seq2seq_spec(network, generator)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    axes["logits"] = {0: "batch", 1: "sequence"} if model.kind == "causal-lm" else {0: "batch"}  # a classifier: a row
    inputs = [_token_inputs(network.config, shape, generator) for shape in (_EXAMPLE_SHAPE, *_CHECK_SHAPES)]
    where = "attention_mask" if model.kind == "causal-lm" else None
    module = SingleOutput(network, ("input_ids", "attention_mask"), "logits")
    return ExportSpec(module, axes, "logits", inputs[0], inputs[1:], compare_where=where)


def _load_transformers(model: ModelFolder, fmt: str) -> torch.nn.Module:
    import transformers

    auto = getattr(transformers, _AUTO_CLASSES[model.kind])
    # ONNX: eager attention (plain matmul and softmax) exports with both exporters; torch 2.13's dynamo exporter
    # fails to decompose T5's SDPA path once sequence lengths are dynamic.
    extra = {"attn_implementation": "eager"} if fmt == "onnx" else {}
    try:
        network = auto.from_pretrained(model.path, dtype=torch.float32, **extra)
    except Exception as exc:  # a user's folder: corrupt or mismatched weights end in one line
        raise ModelLoadError(f"output_dir {model.path}: cannot load {model.class_name}: {_first_line(exc)}") from None
    network.config.use_cache = False  # one forward pass is exported: a cache would be an output nothing reads
    return network.eval()


def _token_inputs(config, shape: tuple[int, int, bool], generator: torch.Generator) -> dict[str, torch.Tensor]:
    batch, length, padded = shape
    config = config.get_text_config()  # where a model nests its vocabulary (multimodal configs)
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    if padded:  # left padding on the first row, as batched generation feeds it
        mask[0, : length // 3] = 0
        ids[0, : length // 3] = config.pad_token_id or 0
    return {"input_ids": ids, "attention_mask": mask}


def _seq2seq_spec(network: torch.nn.Module, generator: torch.Generator) -> ExportSpec:
    names = ("input_ids", "attention_mask", "decoder_input_ids")
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "decoder_input_ids": {0: "batch", 1: "target_sequence"},
        "logits": {0: "batch", 1: "target_sequence"},
    }
    inputs = []
    for shape in (_EXAMPLE_SHAPE, *_CHECK_SHAPES):
        tokens = _token_inputs(network.config, shape, generator)
        target = (shape[0], max(2, shape[1] // 2 + 1))
        vocab_size = network.config.get_text_config().vocab_size
        tokens["decoder_input_ids"] = torch.randint(0, vocab_size, target, generator=generator)
        inputs.append(tokens)
    return ExportSpec(SingleOutput(network, names, "logits"), axes, "logits", inputs[0], inputs[1:])


def _load_unet(model: ModelFolder) -> torch.nn.Module:
    import diffusers

    try:
        unet = getattr(diffusers, model.class_name).from_pretrained(
            model.path, subfolder=model.subfolder, torch_dtype=torch.float32
        )
    except Exception as exc:  # a user's folder: corrupt or mismatched weights end in one line
        raise ModelLoadError(f"output_dir {model.path}: cannot load {model.class_name}: {_first_line(exc)}") from None
    return unet.eval()


def _unet_spec(unet: torch.nn.Module, generator: torch.Generator) -> ExportSpec:
    """Noisy sample, timesteps (one per row, int64) and the UNet's conditioning, to its prediction."""
    config = unet.config
    size = config.sample_size if isinstance(config.sample_size, (list, tuple)) else (config.sample_size,) * 2
    names = ["sample", "timestep"]
    axes = {"sample": {0: "batch"}, "timestep": {0: "batch"}, "prediction": {0: "batch"}}
    if config.get("num_class_embeds"):
        names.append("class_labels")
        axes["class_labels"] = {0: "batch"}
    cross = config.get("cross_attention_dim")
    if "cross_attention_dim" in config:  # UNet2DConditionModel: text embeddings of any length
        names.append("encoder_hidden_states")
        axes["encoder_hidden_states"] = {0: "batch", 1: "text_sequence"}
        cross = cross if isinstance(cross, int) else cross[0]
    inputs = []
    for batch, length, _ in (_EXAMPLE_SHAPE, *_CHECK_SHAPES):
        row = {
            "sample": torch.randn((batch, config.in_channels, *size), generator=generator),
            "timestep": torch.randint(0, 1000, (batch,), generator=generator),  # schedulers' default count
            "class_labels": torch.randint(0, config.get("num_class_embeds") or 1, (batch,), generator=generator),
            "encoder_hidden_states": torch.randn((batch, length, cross or 1), generator=generator),
        }
        inputs.append({name: row[name] for name in names})
    module = SingleOutput(unet, tuple(names), "sample")
    return ExportSpec(module, axes, "prediction", inputs[0], inputs[1:])


# -- writers and runners --------------------------------------------------------------------------------------------
def write_onnx(spec: ExportSpec, path: str, exporter: str) -> None:
    names = spec.module.input_names
    args = tuple(spec.example[name] for name in names)
    common = {"input_names": list(names), "output_names": [spec.output_name]}
    if exporter == "legacy":
        with torch.no_grad():
            torch.onnx.export(spec.module, args, path, dynamic_axes=spec.axes, dynamo=False, **common)
        return
    dims = {label: torch.export.Dim(label) for axes in spec.axes.values() for label in axes.values()}
    # The wrapper takes *inputs, so torch.export wants one tuple of per-input shapes for that one parameter.
    shapes = (tuple({axis: dims[label] for axis, label in spec.axes[name].items()} for name in names),)
    # The exporter logs a warning for each torchvision op it skips when torchvision is absent: noise to a user.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            torch.onnx.export(spec.module, args, path, dynamic_shapes=shapes, dynamo=True, verbose=False, **common)
    finally:
        logger.setLevel(level)


def write_torchscript(spec: ExportSpec, path: str) -> None:
    args = tuple(spec.example[name] for name in spec.module.input_names)
    with torch.no_grad():
        # check_trace reruns the same example; the check on new shapes is the one that matters.
        traced = torch.jit.trace(spec.module, args, check_trace=False)
    torch.jit.save(traced, path)


def runner_for(fmt: str, path: str) -> Callable[[dict[str, torch.Tensor]], np.ndarray]:
    if fmt == "torchscript":
        loaded = torch.jit.load(path)
        return lambda inputs: loaded(*inputs.values()).numpy()
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    wanted = [node.name for node in session.get_inputs()]  # an exporter may drop an input the graph never reads
    return lambda inputs: session.run(None, {name: inputs[name].numpy() for name in wanted})[0]


def check_export(spec: ExportSpec, run: Callable, atol: float, runtime: str) -> float:
    """The largest |exported - PyTorch| over the check inputs; `ExportFailed` past `atol` or when it cannot run."""
    worst = 0.0
    for inputs in spec.checks:
        shapes = ", ".join(f"{name} {tuple(value.shape)}" for name, value in inputs.items())
        with torch.no_grad():
            expected = spec.module(*inputs.values()).numpy()
            try:
                got = np.asarray(run(inputs))
            except Exception as exc:
                raise ExportFailed(f"check: {runtime} could not run it on {shapes}: {_first_line(exc)}") from None
        if got.shape != expected.shape:
            raise ExportFailed(
                f"check: {runtime} gave {spec.output_name} of shape {got.shape}, PyTorch {expected.shape}"
            )
        if spec.compare_where:
            keep = inputs[spec.compare_where].numpy().astype(bool)
            got, expected = got[keep], expected[keep]
        difference = float(np.abs(got - expected).max())
        if not difference <= atol:  # also catches nan
            raise ExportFailed(
                f"check: {runtime}'s {spec.output_name} differ from PyTorch's by up to {difference:.2e} "
                f"(--atol {atol:g}) on {shapes}; nothing was written"
            )
        worst = max(worst, difference)
    return worst


def _write_manifest(folder: str, request: ExportRequest, spec: ExportSpec, worst: float) -> None:
    """`export.json`: what the file takes and returns (names, dtypes, named dynamic axes) and how it was checked."""
    names = spec.module.input_names

    def axes_of(name: str, tensor: torch.Tensor) -> list:
        return [spec.axes.get(name, {}).get(axis, size) for axis, size in enumerate(tensor.shape)]

    manifest = {
        "format": request.format,
        "onnx_exporter": request.onnx_exporter,
        "file": _FILES[request.format],
        "source": os.path.abspath(request.model.path),
        "model": request.model.class_name,
        "kind": request.model.kind,
        "inputs": [
            {
                "name": n,
                "dtype": str(spec.example[n].dtype).removeprefix("torch."),
                "shape": axes_of(n, spec.example[n]),
            }
            for n in names
        ],
        "output": {"name": spec.output_name, "axes": spec.axes[spec.output_name]},
        "check": {"runtime": _RUNTIMES[request.format], "inputs": len(spec.checks), "max_abs_diff": worst},
        "atol": request.atol,
        "torch": torch.__version__,
    }
    with open(os.path.join(folder, "export.json"), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)


def _first_line(exc: BaseException) -> str:
    """The message's first line, without the terminal colours torch.onnx puts in its errors."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]
