"""Mobile variants (ORT format, fp16) of an artifact: made at publish, each file with its own sha256 in the
manifest, checked against model.onnx by the generator contract; real SeaweedFS, real ONNX Runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from registry.artifact import add_variants, build_manifest, read_artifact_dir, sha256_file, write_manifest
from registry.errors import ContractViolation
from registry.manifest import Architecture, Manifest
from test_registry_cli import _one_line_error, run

TASK = "facades-label2photo"


def _artifact(root: Path, make_tiny_onnx, seed: int = 0) -> Path:  # noqa: ANN001
    d = root / f"art{seed}"
    make_tiny_onnx(d / "model.onnx", seed=seed, width=8)
    write_manifest(d, build_manifest(d, task=TASK, method="teacher", architecture=Architecture(family="tiny-conv")))
    return d


def test_cli_publish_with_ort_lists_the_file_and_the_download_runs(registry_env, registry, make_tiny_onnx,
                                                                    tmp_path: Path) -> None:
    import onnxruntime as ort

    d = _artifact(tmp_path, make_tiny_onnx)
    before = sorted(p.name for p in d.iterdir())
    out = json.loads(run(registry_env, "registry", "publish", str(d), "--with-ort", "--json").stdout)
    assert sorted(p.name for p in d.iterdir()) == before  # the input directory is not changed
    files = {f["path"]: f for f in out["files"]}
    assert set(files) == {"model.onnx", "model.ort"} and files["model.ort"]["sha256"] != files["model.onnx"]["sha256"]
    (variant,) = out["variants"]
    assert variant["format"] == "ort" and variant["path"] == "model.ort" and variant["max_abs_diff"] < 1e-4
    # what a client gets: the registry's copy, its sha256 as listed, and it runs like model.onnx
    local = registry.pull(out["artifact_id"], task=TASK)
    assert sha256_file(local / "model.ort") == files["model.ort"]["sha256"]
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    ys = []
    for name in ("model.onnx", "model.ort"):
        sess = ort.InferenceSession(str(local / name), providers=["CPUExecutionProvider"])
        ys.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    assert np.abs(ys[0] - ys[1]).max() < 1e-4
    # published again with the same variant: same content, no change
    again = json.loads(run(registry_env, "registry", "publish", str(d), "--with-ort", "--json").stdout)
    assert again["created"] is False and again["artifact_id"] == out["artifact_id"]


def test_pull_without_variants_then_with(registry, make_tiny_onnx, tmp_path: Path) -> None:
    """The service pulls only model.onnx; a later full pull completes the cached copy."""
    d = _artifact(tmp_path, make_tiny_onnx, seed=3)
    aid = registry.publish_dir(d, variants=["ort"]).manifest.artifact_id
    local = registry.pull(aid, task=TASK, with_variants=False)
    assert (local / "model.onnx").is_file() and not (local / "model.ort").exists()
    assert registry.cached(aid, TASK) == local  # complete for what it holds: not discarded
    assert registry.pull(aid, task=TASK, with_variants=False) == local
    full = registry.pull(aid, task=TASK)
    assert sha256_file(full / "model.ort") == registry.get_manifest(aid, task=TASK).format_file("ort").sha256
    (full / "model.ort").write_bytes(b"tampered")
    assert registry.cached(aid, TASK) is None  # a variant that is present is verified like any file


def test_a_variant_of_another_model_is_refused(registry_env, registry, make_tiny_onnx, tmp_path: Path) -> None:
    d = _artifact(tmp_path, make_tiny_onnx, seed=1)
    add_variants(d, ["ort"])
    other = _artifact(tmp_path, make_tiny_onnx, seed=2)
    add_variants(other, ["ort"])
    shutil.copyfile(other / "model.ort", d / "model.ort")  # same format and shapes, other weights
    manifest = read_artifact_dir(d, verify=False)
    files = [f if f.path != "model.ort" else f.model_copy(update={"sha256": sha256_file(d / "model.ort"),
                                                                   "bytes": (d / "model.ort").stat().st_size})
             for f in manifest.files]
    write_manifest(d, manifest.model_copy(update={"files": files}))
    proc = run(registry_env, "registry", "publish", str(d), expect=7)
    assert "ort variant differs from model.onnx" in _one_line_error(proc)
    assert registry.tasks() == []  # nothing was uploaded


def test_fp16_is_added_only_when_measured_faster(make_tiny_onnx, tmp_path: Path) -> None:
    d = _artifact(tmp_path, make_tiny_onnx)
    manifest, notes = add_variants(d, ["onnx-fp16"], fp16_bench_side=64, fp16_bench_runs=5)
    (note,) = notes
    fp16 = [v for v in manifest.variants if v.format == "onnx-fp16"]
    if fp16:  # measured faster by the margin: listed with both timings
        (v,) = fp16
        assert v.p50_ms is not None and v.onnx_p50_ms is not None and v.onnx_p50_ms / v.p50_ms >= 1.05
        assert (d / "model.fp16.onnx").is_file() and manifest.file("model.fp16.onnx") is not None
        assert v.max_abs_diff < 2e-2
    else:  # not faster here: no file, no entry, and the note says what was measured
        assert "not added" in note and "ms" in note
        assert not (d / "model.fp16.onnx").exists() and manifest.file("model.fp16.onnx") is None
    assert read_artifact_dir(d).variants == manifest.variants


def test_manifest_rejects_a_variant_without_its_file(make_tiny_onnx, tmp_path: Path) -> None:
    d = _artifact(tmp_path, make_tiny_onnx)
    manifest, _ = add_variants(d, ["ort"])
    data = json.loads(manifest.model_dump_json())
    data["files"] = [f for f in data["files"] if f["path"] != "model.ort"]
    with pytest.raises(Exception, match="not listed in files"):
        Manifest.parse(json.dumps(data))
    assert manifest.format_file("ort").path == "model.ort" and manifest.format_file("onnx-fp16") is None


def test_check_variant_needs_float_io(make_tiny_onnx, tmp_path: Path) -> None:
    """An fp16 conversion that also turned the input to float16 is not a drop-in variant."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from registry.contract import check_generator, check_variant

    d = _artifact(tmp_path, make_tiny_onnx)
    record = check_generator(d / "model.onnx", read_artifact_dir(d).architecture)
    onnx.save(convert_float_to_float16(onnx.load(str(d / "model.onnx")), keep_io_types=False), str(d / "model.fp16.onnx"))
    with pytest.raises(ContractViolation, match="expected tensor\\(float\\)"):
        check_variant(d / "model.fp16.onnx", d / "model.onnx", "onnx-fp16", record)
