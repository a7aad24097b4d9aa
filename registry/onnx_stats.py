"""MACs, parameters and opset read from an ONNX graph, for manifests of bare `model.onnx` files.

Convention (biases, normalisation, activations, padding, resizes: not counted):
- Conv: output elements x (in_channels / groups) x kH x kW
- Gemm / MatMul: output elements x inner dimension
- ConvTranspose, `transposed="exact"`: input elements x (out_channels / groups) x kH x kW,
  the multiplies actually done; 49.6 G for CycleGAN's ResNet-9 at 256x256.
- ConvTranspose, `transposed="published"` (default): output elements x (in_channels / groups) x kH x kW, the
  torchprofile convention behind GAN Compression's published 56.8 G for the same network. This is
  what `compression_jobs.counting.count_macs` uses by default and what manifests record (MACs of
  different artifacts stay comparable).
Quantized forms (QLinearConv, ConvInteger, QLinearMatMul, MatMulInteger) count like their float op.
Shapes come from ONNX shape inference with the input fixed to (1, C, res, res); if any counted
op's shapes cannot be inferred, MACs are None rather than a wrong number.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel

from registry.errors import InvalidInput

# op type -> (index of the data input, index of the weight input)
_CONV = {"Conv": (0, 1), "QLinearConv": (0, 3), "ConvInteger": (0, 1)}
_MATMUL = {"MatMul": (0, 1), "Gemm": (0, 1), "QLinearMatMul": (0, 3), "MatMulInteger": (0, 1)}


CONVENTIONS = {
    "published": "conv/linear: out_elems*in/groups*k*k; convtranspose: out_elems*in/groups*k*k "
    "(torchprofile, as published); norms, activations, padding, biases not counted",
    "exact": "conv/linear: out_elems*in/groups*k*k; convtranspose: in_elems*out/groups*k*k; "
    "norms, activations, padding, biases not counted",
}


class OnnxStats(BaseModel):
    macs: int | None
    params: int
    opset: int | None
    input_nc: int | None
    output_nc: int | None
    resolution: int
    macs_convention: str


def _dims(value_info) -> list[int | None]:  # noqa: ANN001 - onnx protobuf
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim]


def _static(dims: list[int | None] | None) -> bool:
    return dims is not None and len(dims) > 0 and all(isinstance(d, int) for d in dims)


def onnx_stats(path: Path | str, resolution: int = 256, *, transposed: str = "published") -> OnnxStats:
    """Count MACs/params of the ONNX model at `path` (see module docstring for the conventions)."""
    if transposed not in CONVENTIONS:
        raise InvalidInput(f"transposed must be one of {sorted(CONVENTIONS)}, got {transposed!r}")
    import onnx
    from onnx import shape_inference

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors have no common base
        raise InvalidInput(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    params = sum(math.prod(t.dims) for t in graph.initializer)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)

    inputs = [i for i in graph.input if i.name not in init_names]
    input_nc = output_nc = None
    if inputs:
        dims = _dims(inputs[0])
        input_nc = dims[1] if len(dims) > 1 else None
        # fix the first input to (1, C, res, res) so every downstream shape is concrete
        shape = inputs[0].type.tensor_type.shape
        if len(shape.dim) == 4:
            for axis, value in enumerate((1, input_nc or 3, resolution, resolution)):
                shape.dim[axis].Clear()
                shape.dim[axis].dim_value = value
    if graph.output:
        out_dims = _dims(graph.output[0])
        output_nc = out_dims[1] if len(out_dims) > 1 else None

    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference failure only means "MACs unknown"
        inferred = None
    macs: int | None = None
    if inferred is not None:
        g = inferred.graph
        shapes: dict[str, list[int | None]] = {}
        for vi in [*g.input, *g.value_info, *g.output]:
            shapes[vi.name] = _dims(vi)
        for t in g.initializer:
            shapes[t.name] = list(t.dims)
        if output_nc is None and g.output:
            od = shapes.get(g.output[0].name)
            output_nc = od[1] if od and len(od) > 1 else None
        macs = _count_macs(g, shapes, transposed)
    return OnnxStats(
        macs=macs, params=int(params), opset=opset, input_nc=input_nc, output_nc=output_nc,
        resolution=resolution, macs_convention=CONVENTIONS[transposed],
    )


def _count_macs(graph, shapes: dict[str, list[int | None]], transposed: str) -> int | None:  # noqa: ANN001
    total = 0
    for node in graph.node:
        op = node.op_type
        if op in _CONV or op == "ConvTranspose":
            x_idx, w_idx = _CONV.get(op, (0, 1))
            w = shapes.get(node.input[w_idx]) if len(node.input) > w_idx else None
            if not _static(w):
                return None
            per_output = math.prod(w[1:])  # (channels / groups) * kH * kW
            if op == "ConvTranspose" and transposed == "exact":
                x = shapes.get(node.input[x_idx])
                if not _static(x):
                    return None
                total += math.prod(x) * per_output
            elif op == "ConvTranspose":
                y = shapes.get(node.output[0])
                if not _static(y):
                    return None
                groups = next((att.i for att in node.attribute if att.name == "group"), 1) or 1
                total += math.prod(y) * (w[0] // groups) * math.prod(w[2:])
            else:
                y = shapes.get(node.output[0])
                if not _static(y):
                    return None
                total += math.prod(y) * per_output
        elif op in _MATMUL:
            a_idx, _ = _MATMUL[op]
            a = shapes.get(node.input[a_idx])
            y = shapes.get(node.output[0])
            if not (_static(a) and _static(y)):
                return None
            trans_a = op == "Gemm" and any(att.name == "transA" and att.i for att in node.attribute)
            inner = a[0] if trans_a else a[-1]
            total += math.prod(y) * inner
    return int(total)
