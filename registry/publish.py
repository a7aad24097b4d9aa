"""Publishing: re-hash locally, run the generator contract, upload the files, the manifest last.

The manifest is written with If-None-Match: *, so a half-upload is never visible and two
publishers of the same bytes agree (same id, same content: the second is a no-op).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable

from registry.artifact import MODEL_NAME, add_variants, build_manifest, read_artifact_dir, write_manifest
from registry.audit import AuditLog
from registry.artifacts import Artifacts
from registry.errors import Conflict, ContractViolation, IntegrityError, InvalidInput, NotFound
from registry.layout import is_reserved
from registry.manifest import Architecture, Manifest, Quality
from registry.names import validate_name
from registry.records import AuditEvent, PublishResult


def check_contract(model_path: Path, manifest: Manifest):  # noqa: ANN201 - registry.contract.ContractCheck
    """Run the generator contract (registry.contract); ContractViolation names the artifact."""
    from registry.contract import check_generator

    try:
        return check_generator(model_path, manifest.architecture)
    except ContractViolation as exc:
        raise ContractViolation(f"artifact {manifest.artifact_id} ({manifest.task}) is not a servable generator: {exc}") from exc


def check_variants(artifact_dir: Path, manifest: Manifest) -> None:
    """Each variant (ORT format, fp16) must be the same generator as model.onnx (registry.contract)."""
    from registry.contract import check_variant

    assert manifest.contract is not None
    for v in manifest.variants:
        try:
            check_variant(artifact_dir / v.path, artifact_dir / manifest.model_file, v.format, manifest.contract)
        except ContractViolation as exc:
            raise ContractViolation(f"artifact {manifest.artifact_id} ({manifest.task}): {exc}") from exc


class Publisher:
    def __init__(self, artifacts: Artifacts, audit: AuditLog, actor: str) -> None:
        self.artifacts, self.audit, self.actor = artifacts, audit, actor
        self.store, self.layout = artifacts.store, artifacts.layout

    def publish_dir(self, artifact_dir: Path, *, variants: Iterable[str] = ()) -> PublishResult:
        """Publish a local artifact directory: re-hash locally, upload files, then the manifest last.

        Re-publishing identical content is a no-op (`created=False`); a different manifest for the
        same id (other file hashes) is an IntegrityError. `variants` ("ort", "onnx-fp16"): mobile
        formats made first (`registry.artifact.add_variants`, in a copy: `artifact_dir` is not changed).
        """
        artifact_dir = Path(artifact_dir)
        if variants:
            with tempfile.TemporaryDirectory(prefix="pocketgan-variants-") as tmp:
                copy = Path(tmp) / "artifact"
                shutil.copytree(artifact_dir, copy)
                _, notes = add_variants(copy, variants)
                result = self.publish_dir(copy)
                return result.model_copy(update={"notes": notes})
        manifest = read_artifact_dir(artifact_dir, verify=True)
        # the generator contract runs before anything is uploaded; its record goes into the manifest
        record = check_contract(artifact_dir / manifest.model_file, manifest)
        manifest = manifest.model_copy(update={"contract": record})
        check_variants(artifact_dir, manifest)
        if manifest.architecture.macs is None and record.graph_macs:  # selection ranks by MACs: fill them in
            arch = manifest.architecture.model_copy(update={"macs": record.graph_macs})
            manifest = manifest.model_copy(update={"architecture": arch})
        for entry in manifest.files:
            if is_reserved(entry.path):
                raise InvalidInput(f"{artifact_dir}: file name {entry.path!r} is reserved for registry metadata")
        prefix = self.layout.artifact_prefix(manifest.task, manifest.artifact_id)
        key = self.layout.manifest_key(manifest.task, manifest.artifact_id)
        existing = self.artifacts.existing(manifest.task, manifest.artifact_id)
        if existing is not None:
            self._same_content(existing, manifest, key)
            return PublishResult(manifest=existing, created=False)
        self.store.check_bucket()
        for entry in manifest.files:
            self.store.put(prefix + entry.path, artifact_dir / entry.path)
        try:
            self.store.put(key, manifest.model_dump_json(indent=2).encode(), if_none_match=True)
        except Conflict:
            # someone published the same id between our check and our write
            winner = self.artifacts.existing(manifest.task, manifest.artifact_id)
            if winner is None:
                raise
            self._same_content(winner, manifest, key)
            return PublishResult(manifest=winner, created=False)
        self.audit.append(
            AuditEvent(
                event_id=uuid.uuid4().hex,
                task=manifest.task,
                action="publish",
                actor=self.actor,
                to_set=[manifest.artifact_id],
            )
        )
        return PublishResult(manifest=manifest, created=True)

    def _same_content(self, existing: Manifest, new: Manifest, key: str) -> None:
        def files(m: Manifest) -> set[tuple[str, str, int]]:
            return {(f.path, f.sha256, f.bytes) for f in m.files}

        if files(existing) != files(new):
            raise IntegrityError(
                f"{self.store.url(key)} already exists with different files for artifact {new.artifact_id}; "
                "artifacts are immutable (change model.onnx to get a new id)"
            )

    def publish_model(
        self,
        onnx_path: Path,
        *,
        task: str,
        method: str,
        parent: str | None = None,
        quality: Quality | None = None,
        job: dict[str, Any] | None = None,
        architecture: Architecture | None = None,
        input_nc: int = 3,
        output_nc: int = 3,
        variants: Iterable[str] = (),
    ) -> PublishResult:
        """Publish a bare ONNX file: build its manifest (sha256, bytes, MACs/params/opset) and publish.

        Channels are declared (`input_nc`/`output_nc`, RGB by default), not copied from the graph,
        so the contract check catches a 1- or 4-channel model published to an RGB task."""
        from registry.onnx_stats import onnx_stats

        validate_name(task, "task")
        validate_name(method, "method")
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise NotFound(f"ONNX file not found: {onnx_path}")
        stats = onnx_stats(onnx_path)  # published convention, as compression_jobs' manifests
        arch = architecture or Architecture(family="unknown")
        updates: dict[str, Any] = {}
        if arch.macs is None and stats.macs is not None:
            updates["macs"] = stats.macs
            updates["reference_resolution"] = stats.resolution
            updates["macs_convention"] = stats.macs_convention
        if arch.params is None:
            updates["params"] = stats.params
        if arch.onnx_opset is None:
            updates["onnx_opset"] = stats.opset
        if architecture is None:
            updates["input_nc"] = input_nc
            updates["output_nc"] = output_nc
        arch = arch.model_copy(update=updates)
        with tempfile.TemporaryDirectory(prefix="pocketgan-publish-") as tmp:
            tmp_dir = Path(tmp)
            shutil.copyfile(onnx_path, tmp_dir / MODEL_NAME)
            manifest = build_manifest(
                tmp_dir,
                task=task,
                method=method,
                architecture=arch,
                parent=parent,
                quality=quality or Quality(),
                job=job or {},
            )
            write_manifest(tmp_dir, manifest)
            if variants:
                _, notes = add_variants(tmp_dir, variants)
                return self.publish_dir(tmp_dir).model_copy(update={"notes": notes})
            return self.publish_dir(tmp_dir)
