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


def read_artifact_dir(artifact_dir: Path, *, verify: bool = True) -> Manifest:
    """Load `manifest.json` from an artifact directory and (by default) check every file's hash."""
    path = artifact_dir / MANIFEST_NAME
    if not path.is_file():
        raise NotFound(f"no {MANIFEST_NAME} in {artifact_dir}")
    manifest = Manifest.parse(path.read_bytes(), source=str(path))
    if verify:
        verify_files(artifact_dir, manifest)
    return manifest


def verify_files(artifact_dir: Path, manifest: Manifest) -> None:
    """Raise IntegrityError naming the first file whose size or sha256 differs from the manifest."""
    for entry in manifest.files:
        full = artifact_dir / entry.path
        if not full.is_file():
            raise IntegrityError(f"{full}: missing (listed in manifest of {manifest.artifact_id})")
        size = full.stat().st_size
        if size != entry.bytes:
            raise IntegrityError(f"{full}: {size} bytes, manifest says {entry.bytes}")
        actual = sha256_file(full)
        if actual != entry.sha256:
            raise IntegrityError(f"{full}: sha256 {actual[:16]}… does not match manifest {entry.sha256[:16]}…")
