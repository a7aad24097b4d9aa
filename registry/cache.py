"""The local verified cache: `cache_dir/artifacts/<task>/<id>/`, never trusted without re-hashing.

Files are written into a temp folder and renamed into place only after every sha256 matched, so
nothing unverified ever sits at the final path; a copy that fails verification is removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

from registry.artifact import read_artifact_dir, variant_paths, verify_files, write_manifest
from registry.errors import IntegrityError, InvalidInput, NotFound
from registry.layout import validate_artifact_id
from registry.manifest import FileEntry, Manifest
from registry.names import validate_name


class LocalCache:
    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)

    def path(self, task: str, artifact_id: str) -> Path:
        validate_name(task, "task")
        validate_artifact_id(artifact_id)
        return self.cache_dir / "artifacts" / task / artifact_id

    def cached(self, artifact_id: str, task: str | None = None) -> Path | None:
        """A verified cached copy (every file's size + sha256 checked against the cached manifest), or None.

        Never touches the network. A cached copy that fails verification is removed.
        """
        validate_artifact_id(artifact_id)
        if task is None:
            root = self.cache_dir / "artifacts"
            hits = sorted(p for p in root.glob(f"*/{artifact_id}") if p.is_dir()) if root.is_dir() else []
            if not hits:
                return None
            task = hits[0].parent.name
        path = self.path(task, artifact_id)
        if not path.is_dir():
            return None
        try:
            manifest = read_artifact_dir(path, verify=True, variants_optional=True)
            if manifest.artifact_id != artifact_id or manifest.task != task:
                raise IntegrityError(f"{path}: cached manifest is for {manifest.task}/{manifest.artifact_id}")
        except (IntegrityError, InvalidInput, NotFound):
            discard(path)
            return None
        return path

    def reuse(self, manifest: Manifest, variants_optional: bool) -> Path | None:
        """The cached copy of `manifest` if it verifies (manifest refreshed: profiles may be newer), else None."""
        final = self.path(manifest.task, manifest.artifact_id)
        if not final.is_dir():
            return None
        try:
            verify_files(final, manifest, variants_optional=variants_optional)
        except IntegrityError:
            discard(final)
            return None
        write_manifest(final, manifest)  # refresh profiles; files are unchanged
        return final

    def fill(self, manifest: Manifest, variants_optional: bool, fetch: Callable[[FileEntry, BinaryIO], None]) -> Path:
        """Download `manifest`'s files with `fetch` (which verifies), then rename into place.
        `variants_optional`: the variants' files (model.ort, ...) are left out."""
        skip = variant_paths(manifest) if variants_optional else set()
        final = self.path(manifest.task, manifest.artifact_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{manifest.artifact_id}-", dir=final.parent))
        try:
            for entry in manifest.files:
                if entry.path in skip:
                    continue
                target = tmp / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as fh:
                    fetch(entry, fh)
                    os.fsync(fh.fileno())
            write_manifest(tmp, manifest)
            try:
                os.rename(tmp, final)
            except OSError:
                # another puller won the rename; use theirs if it verifies
                verify_files(final, manifest, variants_optional=variants_optional)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final


def discard(path: Path) -> None:
    """Move a bad cache entry out of the way atomically, then delete it."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)
