"""The generator contract: is this ONNX file a generator the service can run?

sha256 proves the bytes are the ones published, not that they are a generator. Every gate
(`registry publish`, `registry promote`, the service before it swaps a set in) runs
`check_generator`, which raises `ContractViolation` (exit 7) naming the first broken rule:

1. the file is not empty and the installed ONNX Runtime opens it (CPU provider);
2. exactly one input: float32, rank 4 (NCHW), `input_nc` channels, dynamic height and width
   (a fixed H x W cannot take the sizes clients send); batch dynamic or 1;
3. exactly one output: float32, rank 4, `output_nc` channels;
4. the smallest side the model accepts is found by probing multiples of its size multiple
   (ONNX metadata `pocketgan.size_multiple`, else the family's, else probed powers of two):
   reflect pads and strides make small inputs fail, and the service must never send one;
5. a forward pass on a fixed reference image at that side gives an output of the input's H x W,
   finite, within the declared range (tanh: [-1, 1], 1e-3 slack);
6. MACs > 0 and consistent with the manifest: the graph's own count (registry.onnx_stats) and the
   manifest's figure must both be positive and within a factor of 2 of each other (conventions for
   transposed convolutions differ by ~15 %, a wrong model by orders of magnitude).

The result is recorded in the manifest (`Manifest.contract`: passed, ORT version, min side,
size multiple), so promote and load know which ORT version vouched for it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from registry.errors import ContractViolation
from registry.manifest import Architecture, ContractCheck

MAX_PROBE_SIDE = 512
OUTPUT_RANGE = (-1.0, 1.0)
RANGE_SLACK = 1e-3
MACS_TOLERANCE = 2.0
"""manifest MACs and graph MACs must agree within this factor"""


def ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def reference_image(channels: int, side: int) -> np.ndarray:
    """A fixed 1 x C x side x side float32 pattern in [-1, 1] (gradients + a checkerboard): not all
    zeros, so a model that only misbehaves on real content still has a chance to show it."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, side, dtype=np.float32), np.linspace(-1, 1, side, dtype=np.float32), indexing="ij")
    checker = ((np.indices((side, side)).sum(axis=0) % 2) * 2 - 1).astype(np.float32)
    planes = [(yy, xx, checker)[c % 3] * (0.9 if c < 3 else 0.5) for c in range(channels)]
    return np.stack(planes)[None].astype(np.float32)


def _open(path: Path):  # noqa: ANN202 - onnxruntime.InferenceSession
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # probing sizes that fail is expected: no error lines in the log
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise ContractViolation(f"{path.name}: onnxruntime {ort.__version__} cannot open it: {ort_reason(exc)}") from exc


def ort_reason(exc: BaseException) -> str:
    """ONNX Runtime's message without the status prefix, file path and C++ source location."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^Load model from .*? failed:", "", text)
    text = re.sub(r"^/\S+:\d+ \S+\(.*?\) ", "", text)  # "/onnxruntime_src/...cc:256 onnxruntime::Model::Model(...) "
    return text.strip()[:300]


def _runs(session, name: str, x: np.ndarray) -> np.ndarray | None:  # noqa: ANN001
    try:
        return session.run(None, {name: x})[0]
    except Exception:  # noqa: BLE001 - too small (or otherwise refused) for this network
        return None


def _same_size(y: np.ndarray | None, side: int) -> bool:
    return y is not None and getattr(y, "ndim", 0) == 4 and tuple(y.shape[-2:]) == (side, side)


def check_generator(path: Path | str, architecture: Architecture, *, family_multiple: int | None = None) -> ContractCheck:
    """Run the contract on the ONNX file at `path` against the manifest's `architecture`.

    Returns the record to store in the manifest; raises ContractViolation with the reason.
    """
    from registry.runtime import FAMILY_SIZE_MULTIPLE, META_SIZE_MULTIPLE

    path = Path(path)
    if not path.is_file():
        raise ContractViolation(f"{path}: model file missing")
    if path.stat().st_size == 0:
        raise ContractViolation(f"{path.name} is empty (0 bytes)")
    session = _open(path)

    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ContractViolation(f"the model has {len(inputs)} inputs; a generator takes exactly one image tensor")
    if len(outputs) != 1:
        raise ContractViolation(f"the model has {len(outputs)} outputs; a generator returns exactly one image tensor")
    inp, out = inputs[0], outputs[0]
    for what, arg, nc in (("input", inp, architecture.input_nc), ("output", out, architecture.output_nc)):
        if arg.type != "tensor(float)":
            raise ContractViolation(f"{what} {arg.name!r} is {arg.type}, expected tensor(float) (float32)")
        if len(arg.shape) != 4:
            raise ContractViolation(f"{what} {arg.name!r} has shape {arg.shape}, expected 4 dims (N, C, H, W)")
        c = arg.shape[1]
        if isinstance(c, int) and c != nc:
            raise ContractViolation(f"{what} has {c} channel(s), the manifest declares {nc}")
    batch, _, h, w = inp.shape
    if isinstance(batch, int) and batch != 1:
        raise ContractViolation(f"input batch dimension is fixed at {batch}; expected 1 or dynamic")
    if isinstance(h, int) or isinstance(w, int):
        raise ContractViolation(
            f"input height x width is fixed at {h}x{w}; the service translates images of any size (export with dynamic H and W)"
        )

    meta = dict(session.get_modelmeta().custom_metadata_map)
    multiple = None
    if META_SIZE_MULTIPLE in meta:
        try:
            multiple = int(meta[META_SIZE_MULTIPLE])
        except ValueError:
            raise ContractViolation(f"metadata {META_SIZE_MULTIPLE}={meta[META_SIZE_MULTIPLE]!r} is not an integer") from None
    multiple = multiple or family_multiple or FAMILY_SIZE_MULTIPLE.get(architecture.family)
    nc_in = architecture.input_nc
    if multiple is None:  # the runtime's own rule: smallest power of two >= 4 that runs and keeps its size
        multiple = next(
            (s for s in (4, 8, 16, 32, 64, 128, 256, 512) if _same_size(_runs(session, inp.name, np.zeros((1, nc_in, s, s), np.float32)), s)),
            None,
        )
        if multiple is None:
            raise ContractViolation(f"no square input up to {MAX_PROBE_SIDE}x{MAX_PROBE_SIDE} runs and keeps its size")
    if multiple < 1 or multiple > MAX_PROBE_SIDE:
        raise ContractViolation(f"size multiple {multiple} outside 1..{MAX_PROBE_SIDE}")
    min_side = next(
        (s for s in range(multiple, MAX_PROBE_SIDE + 1, multiple)
         if _same_size(_runs(session, inp.name, np.zeros((1, nc_in, s, s), np.float32)), s)),
        None,
    )
    if min_side is None:
        raise ContractViolation(
            f"no square input of a multiple of {multiple} up to {MAX_PROBE_SIDE} runs and returns the same height x width"
        )

    x = reference_image(nc_in, min_side)
    y = _runs(session, inp.name, x)
    if y is None or not isinstance(y, np.ndarray):
        raise ContractViolation(f"the forward pass on the {min_side}x{min_side} reference image fails")
    expected_shape = (1, architecture.output_nc, min_side, min_side)
    if tuple(y.shape) != expected_shape:
        raise ContractViolation(f"output shape {tuple(y.shape)} for a {min_side}x{min_side} input, expected {expected_shape}")
    if y.dtype != np.float32:
        raise ContractViolation(f"output dtype is {y.dtype}, expected float32")
    if not np.isfinite(y).all():
        raise ContractViolation(f"the output on the reference image has {int((~np.isfinite(y)).sum())} non-finite value(s)")
    lo, hi = float(y.min()), float(y.max())
    if lo < OUTPUT_RANGE[0] - RANGE_SLACK or hi > OUTPUT_RANGE[1] + RANGE_SLACK:
        raise ContractViolation(
            f"output on the reference image spans [{lo:.4g}, {hi:.4g}], outside the declared range {list(OUTPUT_RANGE)} (tanh)"
        )
    del session

    graph_macs = _graph_macs(path, architecture.reference_resolution)
    declared = architecture.macs
    if declared is not None and declared <= 0:
        raise ContractViolation("the manifest declares 0 MACs: not a generator")
    if graph_macs is not None and graph_macs <= 0:
        raise ContractViolation("the graph has 0 MACs (no convolution or matrix product): not a generator")
    if declared is None and graph_macs is None:
        raise ContractViolation("MACs unknown: the manifest has none and the graph's shapes cannot be inferred")
    if declared is not None and graph_macs is not None:
        ratio = declared / graph_macs
        if not 1 / MACS_TOLERANCE <= ratio <= MACS_TOLERANCE:
            raise ContractViolation(
                f"the manifest declares {declared:,} MACs at {architecture.reference_resolution}px, the graph counts "
                f"{graph_macs:,} ({ratio:.3g}x): inconsistent"
            )
    return ContractCheck(
        passed=True, runtime_version=ort_version(), input_name=inp.name, output_name=out.name,
        input_nc=architecture.input_nc, output_nc=architecture.output_nc, size_multiple=multiple, min_side=min_side,
        output_range=OUTPUT_RANGE, reference_output_min=lo, reference_output_max=hi, graph_macs=graph_macs,
    )


def _graph_macs(path: Path, resolution: int) -> int | None:
    from registry.errors import InvalidInput
    from registry.onnx_stats import onnx_stats

    try:
        return onnx_stats(path, resolution=resolution).macs
    except InvalidInput as exc:
        raise ContractViolation(str(exc)) from exc


def needs_check(record: ContractCheck | None) -> bool:
    """True when a manifest's record does not vouch for this installation: none, not passed, or
    checked under another ONNX Runtime version."""
    return record is None or not record.passed or record.runtime_version != ort_version()


VARIANT_TOLERANCE = {"ort": 1e-4, "onnx-fp16": 2e-2}
"""largest |variant - model.onnx| allowed on the reference image (outputs are in [-1, 1]): the ORT format
holds the same float32 graph (optimised), fp16 rounds weights and activations"""


def check_variant(variant_path: Path | str, model_path: Path | str, fmt: str, record: ContractCheck) -> float:
    """A variant (ORT format, fp16) is the same generator: it opens, takes and returns float32 NCHW like
    model.onnx and gives the same output on the reference image at the contract's min side (within
    VARIANT_TOLERANCE). Returns the largest absolute difference; raises ContractViolation otherwise."""
    variant_path, model_path = Path(variant_path), Path(model_path)
    if fmt not in VARIANT_TOLERANCE:
        raise ContractViolation(f"unknown variant format {fmt!r}; known: {', '.join(VARIANT_TOLERANCE)}")
    if not variant_path.is_file() or variant_path.stat().st_size == 0:
        raise ContractViolation(f"{fmt} variant {variant_path.name}: missing or empty")
    session, reference = _open(variant_path), _open(model_path)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ContractViolation(f"{fmt} variant has {len(inputs)} input(s) and {len(outputs)} output(s), expected 1 and 1")
    for what, arg in (("input", inputs[0]), ("output", outputs[0])):
        if arg.type != "tensor(float)":
            raise ContractViolation(f"{fmt} variant {what} {arg.name!r} is {arg.type}, expected tensor(float) like model.onnx")
    x = reference_image(record.input_nc, record.min_side)
    y = _runs(session, inputs[0].name, x)
    want = _runs(reference, record.input_name, x)
    if y is None or want is None or y.shape != want.shape:
        raise ContractViolation(f"{fmt} variant: the forward pass on the {record.min_side}px reference image fails or changes shape")
    if not np.isfinite(y).all():
        raise ContractViolation(f"{fmt} variant: non-finite output on the reference image")
    diff = float(np.abs(y.astype(np.float64) - want).max())
    if diff > VARIANT_TOLERANCE[fmt]:
        raise ContractViolation(
            f"{fmt} variant differs from model.onnx by up to {diff:.3g} on the reference image (allowed {VARIANT_TOLERANCE[fmt]:g})"
        )
    return diff
