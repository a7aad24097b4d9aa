"""Real ONNX files that are *not* generators the service can run (the rows of issue 11's table),
plus one that passes the contract but fails at run time (for the fallback / circuit breaker).

Each builder writes a real model with `onnx.helper`; ONNX Runtime is what refuses or runs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import build_tiny_onnx


def _save(model, path: Path, check: bool = True) -> Path:  # noqa: ANN001
    import onnx

    if check:
        onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def one_channel_input(path: Path) -> Path:
    return build_tiny_onnx(path, seed=11, in_nc=1)


def four_channel_input(path: Path) -> Path:
    return build_tiny_onnx(path, seed=12, in_nc=4)


def one_channel_output(path: Path) -> Path:
    return build_tiny_onnx(path, seed=13, out_nc=1)


def empty_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def ir_version_too_new(path: Path) -> Path:
    """A valid tiny generator whose header claims an IR version no ONNX Runtime reads."""
    import onnx

    build_tiny_onnx(path, seed=14)
    model = onnx.load(str(path))
    model.ir_version = 99
    return _save(model, path, check=False)


def identity(path: Path, padding_floats: int = 1 << 18) -> Path:
    """output = input (0 MACs), made heavy by an unused 1 MiB initializer (the issue's was 190 MB)."""
    from onnx import TensorProto, helper, numpy_helper

    pad = numpy_helper.from_array(np.zeros(padding_floats, np.float32), "unused")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])], "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "height", "width"])],
        initializer=[pad],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return _save(model, path)


def _conv_graph(in_shape: list, out_shape: list, extra_nodes: list, last: str, seed: int):  # noqa: ANN202
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((3, 3, 3, 3)) * 0.1).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), *extra_nodes,
             helper.make_node("Tanh", [last], ["output"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)], initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def static_7x7(path: Path) -> Path:
    return _save(_conv_graph([1, 3, 7, 7], [1, 3, 7, 7], [], "h", seed=15), path)


def square_only(path: Path, seed: int = 16) -> Path:
    """Passes the contract (probed on square inputs) but raises in ONNX Runtime on any non-square
    image: tanh(conv(x) + transpose_hw(conv(x))) cannot broadcast H x W with W x H."""
    from onnx import helper

    extra = [
        helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 1, 3, 2]),
        helper.make_node("Add", ["h", "ht"], ["s"]),
    ]
    return _save(_conv_graph([1, 3, "height", "width"], [1, 3, "height", "width"], extra, "s", seed=seed), path)


def unbounded_output(path: Path) -> Path:
    """A conv without the final tanh, scaled so the reference image's output leaves [-1, 1]."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((3, 3, 3, 3), 1.0, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["output"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "height", "width"])], initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return _save(model, path)


def reflect_pad(path: Path) -> Path:
    """A valid generator that needs at least 8x8: reflect padding by 4 (pad < side) then a 9x9 conv,
    size multiple 4 in its metadata, so 4x4 fails in ONNX Runtime and 8x8 is its smallest side."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(17)
    w = numpy_helper.from_array((rng.standard_normal((3, 3, 9, 9)) * 0.02).astype(np.float32), "w")
    pads = numpy_helper.from_array(np.array([0, 0, 4, 4, 0, 0, 4, 4], np.int64), "pads")
    graph = helper.make_graph(
        [helper.make_node("Pad", ["input", "pads"], ["p"], mode="reflect"),
         helper.make_node("Conv", ["p", "w"], ["h"], kernel_shape=[9, 9]),
         helper.make_node("Tanh", ["h"], ["output"])], "reflect",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "height", "width"])], initializer=[w, pads],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, {"pocketgan.size_multiple": "4"})
    return _save(model, path)


def artifact_dir(root: Path, name: str, builder, *, task: str, macs: int | None, input_nc: int = 3,  # noqa: ANN001
                 output_nc: int = 3, method: str = "teacher", ssim: float | None = None) -> tuple[Path, "object"]:
    """An artifact directory (model.onnx + manifest.json, no contract record, like an old manifest)
    for the model `builder` writes; returns (dir, manifest)."""
    from registry.artifact import build_manifest, write_manifest
    from registry.manifest import Architecture, Quality

    d = root / name
    builder(d / "model.onnx")
    arch = Architecture(family="test", macs=macs, reference_resolution=256, input_nc=input_nc, output_nc=output_nc)
    manifest = build_manifest(d, task=task, method=method, architecture=arch, quality=Quality(ssim_to_teacher=ssim))
    write_manifest(d, manifest)
    return d, manifest


def sneak_in(registry, d: Path, manifest) -> str:  # noqa: ANN001
    """Upload an artifact behind the registry's back (no contract check), as an old registry or a
    hostile writer would: files, then the manifest. Returns the artifact id."""
    prefix = registry.layout.artifact_prefix(manifest.task, manifest.artifact_id)
    for f in manifest.files:
        registry.store.put(prefix + f.path, d / f.path)
    registry.store.put(prefix + "manifest.json", manifest.model_dump_json().encode())
    return manifest.artifact_id


def point_alias(registry, task: str, channel: str, ids: list[str]) -> int:  # noqa: ANN001
    """Write the alias directly (no promote checks); returns the new revision."""
    from registry.records import Alias

    key = registry.layout.alias_key(task, channel)
    try:
        current = registry.read_alias(task, channel).alias
        new = current.model_copy(update={"revision": current.revision + 1, "artifacts": ids})
    except Exception:  # noqa: BLE001 - never promoted
        new = Alias(task=task, channel=channel, revision=1, artifacts=ids, history=[], updated_by="pytest")
    registry.store.put(key, new.model_dump_json().encode())
    return new.revision
