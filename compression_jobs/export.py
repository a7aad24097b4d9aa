"""Export a generator to ONNX (dynamic batch, height and width) and prove it matches PyTorch.

The new dynamo exporter (``torch.onnx.export(..., dynamo=True)``, via onnxscript) is tried
first; if it raises or its graph fails the parity check, the TorchScript exporter
(``dynamo=False``) is tried. Whichever passes is recorded (``ExportInfo.exporter``, and in the
manifest's ``job.export``). If none passes, the partial file is deleted and
:class:`ExportParityError` is raised: an artifact that does not reproduce its PyTorch model is
never written.

The ONNX file carries metadata the runtime reads: ``pocketgan.size_multiple`` (what H and W
must be divisible by) and ``pocketgan.family``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from pydantic import BaseModel
from torch import nn

from registry.artifact import MODEL_NAME, build_manifest, write_manifest
from registry.manifest import Architecture, Manifest, Quality
from registry.runtime import META_FAMILY, META_SIZE_MULTIPLE

DEFAULT_OPSET = 18
"""Opset 18: the dynamo exporter's native opset; onnxruntime >= 1.14 runs it (opset 17 is used for
the TorchScript fallback, where 18 adds nothing for these ops)."""
PARITY_ATOL = 1e-4
Exporter = Literal["auto", "dynamo", "torchscript"]


class ExportParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model within tolerance (file removed)."""


class ExportInfo(BaseModel):
    """How a model was exported and how closely ONNX Runtime reproduces it."""

    exporter: str
    opset: int
    size_multiple: int
    parity_atol: float
    parity_max_abs_diff: dict[str, float]
    attempts: list[str] = []
    fast_graph: bool = False


def size_multiple_of(model: nn.Module) -> int:
    """What input H/W must be divisible by (class attribute on our generators, default 4)."""
    return int(getattr(model, "size_multiple", 4))


def family_of(model: nn.Module) -> str:
    from compression_jobs.models import MobileResnetGenerator, ResnetGenerator, SuperMobileResnetGenerator, UnetGenerator

    for cls, name in ((ResnetGenerator, "resnet"), (UnetGenerator, "unet"), (MobileResnetGenerator, "mobile-resnet"),
                      (SuperMobileResnetGenerator, "supernet")):
        if isinstance(model, cls):
            return name
    return model.__class__.__name__.lower()


def parity_shapes(resolution: int, size_multiple: int, input_nc: int) -> list[tuple[int, int, int, int]]:
    """The export resolution (batch 1) and one other, non-square shape at batch 2 (tests all dynamic axes)."""
    m = size_multiple
    other = (resolution + m, resolution + 2 * m) if m <= 16 else (resolution, resolution + m)
    return [(1, input_nc, resolution, resolution), (2, input_nc, other[0], other[1])]


def _export_once(model: nn.Module, sample: torch.Tensor, path: Path, exporter: str, opset: int) -> None:
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            if exporter == "dynamo":
                dyn = torch.export.Dim.DYNAMIC
                torch.onnx.export(
                    model, (sample,), str(path), dynamo=True, external_data=False, opset_version=opset,
                    input_names=["input"], output_names=["output"], dynamic_shapes=({0: dyn, 2: dyn, 3: dyn},),
                    verbose=False,
                )
            else:
                axes = {0: "batch", 2: "height", 3: "width"}
                torch.onnx.export(
                    model, (sample,), str(path), dynamo=False, opset_version=min(opset, 17),
                    input_names=["input"], output_names=["output"], dynamic_axes={"input": axes, "output": axes},
                )
        finally:
            logging.getLogger("torch.onnx").setLevel(previous)


def _parity(model: nn.Module, path: Path, shapes: list[tuple[int, int, int, int]], seed: int = 0) -> dict[str, float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    diffs: dict[str, float] = {}
    for shape in shapes:
        x = torch.rand(shape, generator=gen) * 2 - 1
        with torch.no_grad():
            expected = model(x.clone()).numpy()
        got = session.run(None, {name: x.numpy()})[0]
        key = "x".join(str(s) for s in shape)
        if got.shape != expected.shape:
            diffs[key] = float("inf")
            continue
        diffs[key] = float(np.max(np.abs(got.astype(np.float64) - expected)))
    return diffs


def strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drop what the exporter records per node and per value for debugging (a Python stack trace with
    absolute source paths of the exporting machine, module names, FX node names): an artifact ships
    nothing of the machine that built it, and the same weights export to the same bytes (the same
    artifact id) from any checkout. Model-level metadata (ours) is kept."""
    graphs = [proto.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            del node.metadata_props[:]
            node.doc_string = ""
            graphs += [a.g for a in node.attribute if a.HasField("g")] + [sg for a in node.attribute for sg in a.graphs]
        for value in [*g.input, *g.output, *g.value_info, *g.initializer]:
            del value.metadata_props[:]
        g.doc_string = ""
    for fn in proto.functions:
        for node in fn.node:
            del node.metadata_props[:]
            node.doc_string = ""


def _add_metadata(path: Path, metadata: dict[str, str]) -> int:
    proto = onnx.load(str(path))
    strip_debug_info(proto)
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = value
        else:
            proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "pocketgan"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def export_onnx(
    model: nn.Module,
    out_path: Path | str,
    *,
    resolution: int = 64,
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "auto",
    atol: float = PARITY_ATOL,
    metadata: dict[str, str] | None = None,
    fast_graph: bool = False,
) -> ExportInfo:
    """Write `model` (eval mode) to `out_path` with dynamic batch/H/W and check parity (max abs diff <= atol)
    at `resolution` and one other shape. Raises ExportParityError (and deletes the file) on failure.

    `fast_graph`: export :func:`compression_jobs.models.fast.fast_inference_copy` of the model (exact
    rewrites ORT runs faster); parity is still checked against `model` itself."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    multiple = size_multiple_of(model)
    if resolution % multiple:
        raise ValueError(f"export resolution {resolution} must be a multiple of {multiple}")
    input_nc = int(getattr(model, "input_nc", 3))
    shapes = parity_shapes(resolution, multiple, input_nc)
    sample = torch.rand(shapes[0], generator=torch.Generator().manual_seed(1)) * 2 - 1
    graph = model
    if fast_graph:
        from compression_jobs.models.fast import fast_inference_copy

        graph = fast_inference_copy(model)
    order = {"auto": ["dynamo", "torchscript"], "dynamo": ["dynamo"], "torchscript": ["torchscript"]}[exporter]
    attempts: list[str] = []
    tmp = out_path.with_name(out_path.name + ".partial")
    for name in order:
        tmp.unlink(missing_ok=True)
        try:
            _export_once(graph, sample, tmp, name, opset)
            meta = {META_SIZE_MULTIPLE: str(multiple), META_FAMILY: family_of(model), **(metadata or {})}
            used_opset = _add_metadata(tmp, meta)
            diffs = _parity(model, tmp, shapes)
        except Exception as exc:  # noqa: BLE001 - any exporter failure: record it and try the next one
            attempts.append(f"{name}: failed ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})")
            continue
        worst = max(diffs.values())
        if worst <= atol:
            attempts.append(f"{name}: ok (max abs diff {worst:.2e})")
            tmp.replace(out_path)
            return ExportInfo(exporter=name, opset=used_opset, size_multiple=multiple, parity_atol=atol,
                              parity_max_abs_diff=diffs, attempts=attempts, fast_graph=fast_graph)
        attempts.append(f"{name}: parity failed (max abs diff {worst:.3g} > {atol:g} at {diffs})")
    tmp.unlink(missing_ok=True)
    out_path.unlink(missing_ok=True)
    raise ExportParityError(f"ONNX export of {model.__class__.__name__} failed: " + "; ".join(attempts))


def architecture_of(model: nn.Module, *, precision: str = "fp32", opset: int | None = None,
                    reference_resolution: int = 256) -> Architecture:
    """Manifest architecture block: family, widths, MACs at the reference resolution, params."""
    from compression_jobs.counting import CONVENTION, count_macs, count_params

    family = family_of(model)
    multiple = size_multiple_of(model)
    ref = reference_resolution if reference_resolution % multiple == 0 else multiple * max(1, round(reference_resolution / multiple))
    config = getattr(model, "config", None)
    return Architecture(
        family=family,
        channel_config=str(config) if config is not None else None,
        input_nc=int(getattr(model, "input_nc", 3)),
        output_nc=int(getattr(model, "output_nc", 3)),
        ngf=getattr(model, "ngf", None),
        n_blocks=getattr(model, "n_blocks", None),
        macs=count_macs(model, ref),
        reference_resolution=ref,
        params=count_params(model),
        onnx_opset=opset,
        precision=precision,  # type: ignore[arg-type]
        macs_convention=CONVENTION,
    )


def export_artifact(
    model: nn.Module,
    out_dir: Path | str,
    *,
    task: str,
    method: str,
    parent: str | None = None,
    quality: Quality | None = None,
    job: dict[str, Any] | None = None,
    resolution: int | None = None,
    exporter: Exporter = "auto",
    opset: int = DEFAULT_OPSET,
    code_version: str | None = None,
    fast_graph: bool = False,
) -> Manifest:
    """Export to ``out_dir/model.onnx`` (parity-checked) and write ``out_dir/manifest.json``.

    `resolution` is the parity-check resolution (default: 64, or 2**num_downs for U-Nets).
    The manifest's ``job.export`` records the exporter used and the parity figures. `fast_graph`:
    see :func:`export_onnx` (architecture, MACs and params stay those of `model`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    multiple = size_multiple_of(model)
    res = resolution or max(64, multiple)
    info = export_onnx(model, out_dir / MODEL_NAME, resolution=res, opset=opset, exporter=exporter, fast_graph=fast_graph)
    arch = architecture_of(model, opset=info.opset)
    job_info = dict(job or {})
    job_info["export"] = info.model_dump()
    if getattr(model, "num_downs", None) is not None:
        job_info.setdefault("num_downs", model.num_downs)
    if getattr(model, "norm", None) is not None:
        job_info.setdefault("norm", model.norm)
    manifest = build_manifest(
        out_dir, task=task, method=method, architecture=arch, parent=parent,
        quality=quality or Quality(), job=job_info, code_version=code_version or _code_version(),
    )
    write_manifest(out_dir, manifest)
    return manifest


def _code_version() -> str | None:
    try:
        from importlib.metadata import version

        return f"pocketgan {version('pocketgan')}"
    except Exception:  # noqa: BLE001
        return None
