"""Artifact directories on local disk: `model.onnx` (+ other files) and `manifest.json`.

Compression jobs write them (export, quantize); `registry publish` reads them. Hashing lives
here so every producer computes sha256, sizes and the artifact id the same way.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from registry.errors import IntegrityError, InvalidInput, NotFound
from registry.manifest import Architecture, FileEntry, Manifest, artifact_id_from_sha256

MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(artifact_dir: Path, paths: Iterable[str]) -> list[FileEntry]:
    """Hash and size each file (paths relative to `artifact_dir`)."""
    entries = []
    for rel in paths:
        full = artifact_dir / rel
        if not full.is_file():
            raise NotFound(f"artifact file missing: {full}")
        entries.append(FileEntry(path=rel, sha256=sha256_file(full), bytes=full.stat().st_size))
    return entries


def build_manifest(
    artifact_dir: Path,
    *,
    task: str,
    method: str,
    architecture: Architecture,
    model_file: str = MODEL_NAME,
    extra_files: Iterable[str] = (),
    **fields: Any,
) -> Manifest:
    """A manifest for the files in `artifact_dir`: sha256, bytes and artifact id computed here."""
    files = file_entries(artifact_dir, [model_file, *extra_files])
    model = files[0]
    arch = architecture.model_copy(update={"file_bytes": model.bytes})
    try:
        return Manifest(
            task=task,
            method=method,
            artifact_id=artifact_id_from_sha256(model.sha256),
            architecture=arch,
            files=files,
            model_file=model_file,
            **fields,
        )
    except ValueError as exc:
        raise InvalidInput(f"cannot build manifest for {artifact_dir}: {exc}") from exc


def write_manifest(artifact_dir: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically (temp file + rename), so readers never see half of it."""
    artifact_dir.mkdir(parents=True, exist_ok=True)
    target = artifact_dir / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(dir=artifact_dir, prefix=".manifest-", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(manifest.model_dump_json(indent=2))
    os.replace(tmp, target)
    return target


def read_artifact_dir(artifact_dir: Path, *, verify: bool = True, variants_optional: bool = False) -> Manifest:
    """Load `manifest.json` from an artifact directory and (by default) check every file's hash
    (`variants_optional`: a variant file may be absent, as in the service's cache; present, it is checked)."""
    path = artifact_dir / MANIFEST_NAME
    if not path.is_file():
        raise NotFound(f"no {MANIFEST_NAME} in {artifact_dir}")
    manifest = Manifest.parse(path.read_bytes(), source=str(path))
    if verify:
        verify_files(artifact_dir, manifest, variants_optional=variants_optional)
    return manifest


def variant_paths(manifest: Manifest) -> set[str]:
    """The files of the manifest's variants (ORT format, fp16): what the service itself never runs."""
    return {v.path for v in manifest.variants}


def verify_files(artifact_dir: Path, manifest: Manifest, *, variants_optional: bool = False) -> None:
    """Raise IntegrityError naming the first file whose size or sha256 differs from the manifest."""
    optional = variant_paths(manifest) if variants_optional else set()
    for entry in manifest.files:
        full = artifact_dir / entry.path
        if not full.is_file():
            if entry.path in optional:
                continue
            raise IntegrityError(f"{full}: missing (listed in manifest of {manifest.artifact_id})")
        size = full.stat().st_size
        if size != entry.bytes:
            raise IntegrityError(f"{full}: {size} bytes, manifest says {entry.bytes}")
        actual = sha256_file(full)
        if actual != entry.sha256:
            raise IntegrityError(f"{full}: sha256 {actual[:16]}… does not match manifest {entry.sha256[:16]}…")


FP16_BENCH_SIDE = 256
FP16_BENCH_RUNS = 9
FP16_MIN_SPEEDUP = 1.05
"""fp16 is added only when model.onnx's p50 / fp16's p50 is at least this (a tie within noise is no reason)"""


def add_variants(artifact_dir: Path, formats: Iterable[str], *, fp16_bench_side: int = FP16_BENCH_SIDE,
                 fp16_bench_runs: int = FP16_BENCH_RUNS) -> tuple[Manifest, list[str]]:
    """Write mobile variants of model.onnx next to it and list them in manifest.json (own sha256 each).

    "ort": ONNX Runtime's own converter (`onnxruntime.tools.convert_onnx_models_to_ort`, fixed
    optimisations, no x86-only NCHWc layout so it runs on ARM phones). "onnx-fp16": weights and
    activations in fp16 with float32 input/output (`onnxruntime.transformers.float16`), added only when
    it measured at least FP16_MIN_SPEEDUP faster than model.onnx here (p50, side by side; on CPUs
    without fp16 kernels it is slower and is left out). Each variant passes `registry.contract.check_variant` first. Returns the
    new manifest and one line per format saying what was done.
    """
    from registry.contract import check_generator, check_variant
    from registry.manifest import VARIANT_FILES, Variant

    manifest = read_artifact_dir(artifact_dir, verify=True)
    model = artifact_dir / manifest.model_file
    record = manifest.contract or check_generator(model, manifest.architecture)
    variants = {v.format: v for v in manifest.variants}
    notes = []
    for fmt in dict.fromkeys(formats):
        if fmt not in VARIANT_FILES:
            raise InvalidInput(f"unknown variant format {fmt!r}; known: {', '.join(VARIANT_FILES)}")
        target = artifact_dir / VARIANT_FILES[fmt]
        if fmt == "ort":
            _write_ort(model, target)
            timing: tuple[float | None, float | None] = (None, None)
        else:
            _write_fp16(model, target)
            timing = _p50_ms(target, record, fp16_bench_side, fp16_bench_runs), _p50_ms(model, record, fp16_bench_side, fp16_bench_runs)
            if timing[1] / timing[0] < FP16_MIN_SPEEDUP:
                target.unlink()
                variants.pop(fmt, None)
                notes.append(f"{fmt}: not added, p50 {timing[0]:.2f} ms vs {timing[1]:.2f} ms for model.onnx "
                             f"at {fp16_bench_side}px here")
                continue
        diff = check_variant(target, model, fmt, record)
        variants[fmt] = Variant(format=fmt, path=target.name, runtime_version=_ort_version(),
                                max_abs_diff=diff, p50_ms=timing[0], onnx_p50_ms=timing[1])
        notes.append(f"{fmt}: {target.name} added, max |diff| {diff:.2g} vs model.onnx"
                     + (f", p50 {timing[0]:.2f} ms vs {timing[1]:.2f} ms at {fp16_bench_side}px" if timing[0] else ""))
    keep = [f.path for f in manifest.files if f.path not in {VARIANT_FILES[k] for k in VARIANT_FILES}]
    paths = [*keep, *(v.path for v in variants.values())]
    try:
        manifest = Manifest.model_validate({**manifest.model_dump(), "files": [e.model_dump() for e in file_entries(artifact_dir, paths)],
                                            "variants": [v.model_dump() for v in variants.values()]})
    except ValueError as exc:
        raise InvalidInput(f"cannot add variants to {artifact_dir}: {exc}") from exc
    write_manifest(artifact_dir, manifest)
    return manifest, notes


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def _write_ort(model: Path, target: Path) -> None:
    """ONNX Runtime's converter into a temp dir (it also writes a required-operators config), quietly."""
    import contextlib
    import io
    import logging
    import shutil

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(prefix="pocketgan-ort-") as tmp:
        src = Path(tmp) / "in" / "model.onnx"
        src.parent.mkdir()
        shutil.copyfile(model, src)
        quiet = logging.getLogger("ort_format_model.utils")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                convert_onnx_models_to_ort(src, output_dir=Path(tmp) / "out", optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform="arm")
        except Exception as exc:  # noqa: BLE001 - the converter raises several types
            raise InvalidInput(f"{model}: ONNX Runtime cannot convert it to the ORT format: {str(exc).splitlines()[0][:200]}") from exc
        finally:
            quiet.setLevel(level)
        shutil.copyfile(Path(tmp) / "out" / "model.ort", target)


def _write_fp16(model: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load(str(model)), keep_io_types=True)
    onnx.save(converted, str(target))


def _p50_ms(path: Path, record: Any, side: int, runs: int) -> float:
    """Median latency of one image at `side` (rounded up to the size multiple), 1 thread, after a warm-up."""
    import statistics
    import time

    import numpy as np
    import onnxruntime as ort

    side = max(record.min_side, -(-side // record.size_multiple) * record.size_multiple)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).uniform(-1, 1, (1, record.input_nc, side, side)).astype(np.float32)
    session.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)
