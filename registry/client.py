"""Registry operations on an object store: publish, list, verify, pull, profile, promote, roll back, retire.

S3 layout (see DESIGN.md), under `s3://BUCKET/PREFIX/`:

    artifacts/<task>/<id>/model.onnx (+ other files)   immutable, uploaded first
    artifacts/<task>/<id>/manifest.json                written last with If-None-Match: *
    artifacts/<task>/<id>/profiles/<tag>.json          hardware profiles, merged in when read
    artifacts/<task>/<id>/retired.json                 tombstone (hidden from `list` by default)
    aliases/<task>/<channel>.json                      promoted set, updated with If-Match (CAS)
    events/<task>/<UTC timestamp>-<uuid>.json          append-only audit, If-None-Match: *

An artifact without manifest.json is invisible (a half-finished upload). Every name is validated
with `registry.names` before it becomes part of a key.

Offline use (the service): `pull(id, task, allow_offline=True)` returns a verified cached copy
when S3 is unreachable; `cached(id, task)` never touches the network.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel

from registry.artifact import (
    MANIFEST_NAME,
    MODEL_NAME,
    add_variants,
    build_manifest,
    read_artifact_dir,
    sha256_file,
    variant_paths,
    write_manifest,
)
from registry.config import RegistrySettings
from registry.errors import Conflict, ContractViolation, IntegrityError, InvalidInput, NotFound, RegistryUnreachable
from registry.manifest import ARTIFACT_ID_LENGTH, Architecture, HardwareProfile, Manifest, Quality
from registry.names import validate_name
from registry.records import MAX_ALIAS_HISTORY, Alias, AliasSnapshot, AuditEvent
from registry.store import BucketNotFound, ObjectStore, S3ObjectStore

RETIRED_NAME = "retired.json"
PROFILES_DIR = "profiles"


class PublishResult(BaseModel):
    manifest: Manifest
    created: bool
    notes: list[str] = []  # what publishing with variants did (one line per format)


class ListedArtifact(BaseModel):
    """A manifest plus whether it is retired (for `ls --all`); or, for a stored object that no longer
    parses, `manifest=None` and `corrupt` saying why (one bad object must not hide the others)."""

    artifact_id: str
    task: str
    manifest: Manifest | None
    retired: bool = False
    corrupt: str | None = None


class CorruptObject(BaseModel):
    """A stored registry object (manifest, profile, audit event) that does not parse."""

    key: str
    reason: str


class Tombstone(BaseModel):
    artifact_id: str
    task: str
    retired_at: datetime
    retired_by: str


def validate_artifact_id(value: str) -> str:
    validate_name(value, "artifact id")
    if not re.fullmatch(rf"[0-9a-f]{{{ARTIFACT_ID_LENGTH}}}", value):
        raise InvalidInput(f"invalid artifact id {value!r}: expected {ARTIFACT_ID_LENGTH} lowercase hex digits")
    return value


def _utc_stamp(when: datetime) -> str:
    """Sortable, key-safe timestamp: 20260123T045501.123456Z."""
    return when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


class Registry:
    """The model registry. Thread-safe for concurrent calls (boto3 clients are)."""

    def __init__(self, settings: RegistrySettings | None = None, store: ObjectStore | None = None) -> None:
        self.settings = settings or RegistrySettings.from_env()
        bucket, prefix = self.settings.location()
        self.bucket = bucket
        self.prefix = prefix
        self.store: ObjectStore = store or S3ObjectStore(self.settings, bucket)
        self._root = f"{prefix}/" if prefix else ""

    @classmethod
    def from_env(cls) -> "Registry":
        return cls(RegistrySettings.from_env())

    # ------------------------------------------------------------------ keys

    def _artifact_prefix(self, task: str, artifact_id: str) -> str:
        validate_name(task, "task")
        validate_artifact_id(artifact_id)
        return f"{self._root}artifacts/{task}/{artifact_id}/"

    def _manifest_key(self, task: str, artifact_id: str) -> str:
        return self._artifact_prefix(task, artifact_id) + MANIFEST_NAME

    def _alias_key(self, task: str, channel: str) -> str:
        validate_name(task, "task")
        validate_name(channel, "channel")
        return f"{self._root}aliases/{task}/{channel}.json"

    def _events_prefix(self, task: str) -> str:
        validate_name(task, "task")
        return f"{self._root}events/{task}/"

    def url(self, key: str = "") -> str:
        return self.store.url(key)

    # ------------------------------------------------------------------ publish

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
        record = self._contract(artifact_dir / manifest.model_file, manifest)
        manifest = manifest.model_copy(update={"contract": record})
        self._check_variants(artifact_dir, manifest)
        if manifest.architecture.macs is None and record.graph_macs:  # selection ranks by MACs: fill them in
            arch = manifest.architecture.model_copy(update={"macs": record.graph_macs})
            manifest = manifest.model_copy(update={"architecture": arch})
        for entry in manifest.files:
            if entry.path in (MANIFEST_NAME, RETIRED_NAME) or entry.path.startswith(PROFILES_DIR + "/"):
                raise InvalidInput(f"{artifact_dir}: file name {entry.path!r} is reserved for registry metadata")
        prefix = self._artifact_prefix(manifest.task, manifest.artifact_id)
        key = prefix + MANIFEST_NAME
        existing = self._existing_manifest(key)
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
            winner = self._existing_manifest(key)
            if winner is None:
                raise
            self._same_content(winner, manifest, key)
            return PublishResult(manifest=winner, created=False)
        self._append_event(
            AuditEvent(
                event_id=uuid.uuid4().hex,
                task=manifest.task,
                action="publish",
                actor=self.settings.actor,
                to_set=[manifest.artifact_id],
            )
        )
        return PublishResult(manifest=manifest, created=True)

    def _existing_manifest(self, key: str) -> Manifest | None:
        try:
            data, _ = self.store.get(key)
        except BucketNotFound:
            raise
        except NotFound:
            return None
        return self._parse_stored(data, key)

    def _parse_stored(self, data: bytes, key: str) -> Manifest:
        """A manifest read back from the bucket; one that no longer validates is an integrity failure (exit 5)."""
        try:
            return Manifest.parse(data, source=self.url(key))
        except InvalidInput as exc:
            raise IntegrityError(f"corrupt registry object: {exc}") from exc

    @staticmethod
    def _contract(model_path: Path, manifest: Manifest):  # noqa: ANN205 - ContractCheck
        """Run the generator contract (registry.contract); ContractViolation names the artifact."""
        from registry.contract import check_generator

        try:
            return check_generator(model_path, manifest.architecture)
        except ContractViolation as exc:
            raise ContractViolation(f"artifact {manifest.artifact_id} ({manifest.task}) is not a servable generator: {exc}") from exc

    @staticmethod
    def _check_variants(artifact_dir: Path, manifest: Manifest) -> None:
        """Each variant (ORT format, fp16) must be the same generator as model.onnx (registry.contract)."""
        from registry.contract import check_variant

        assert manifest.contract is not None
        for v in manifest.variants:
            try:
                check_variant(artifact_dir / v.path, artifact_dir / manifest.model_file, v.format, manifest.contract)
            except ContractViolation as exc:
                raise ContractViolation(f"artifact {manifest.artifact_id} ({manifest.task}): {exc}") from exc

    def _same_content(self, existing: Manifest, new: Manifest, key: str) -> None:
        def files(m: Manifest) -> set[tuple[str, str, int]]:
            return {(f.path, f.sha256, f.bytes) for f in m.files}

        if files(existing) != files(new):
            raise IntegrityError(
                f"{self.url(key)} already exists with different files for artifact {new.artifact_id}; "
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

    # ------------------------------------------------------------------ read

    def tasks(self) -> builtins.list[str]:
        """Tasks that have at least one artifact folder."""
        return self.store.list_dirs(f"{self._root}artifacts/")

    def _find_task(self, artifact_id: str) -> str:
        validate_artifact_id(artifact_id)
        found = [t for t in self.tasks() if self.store.exists(self._manifest_key(t, artifact_id))]
        if not found:
            raise NotFound(f"artifact {artifact_id} not found in {self.url(self._root)}")
        if len(found) > 1:
            raise InvalidInput(f"artifact {artifact_id} exists under several tasks ({', '.join(found)}); pass --task")
        return found[0]

    def _resolve_task(self, artifact_id: str, task: str | None) -> str:
        validate_artifact_id(artifact_id)
        return validate_name(task, "task") if task is not None else self._find_task(artifact_id)

    def get_manifest(self, artifact_id: str, task: str | None = None) -> Manifest:
        """The manifest with its hardware profiles merged in (retired artifacts are still readable)."""
        task = self._resolve_task(artifact_id, task)
        key = self._manifest_key(task, artifact_id)
        try:
            data, _ = self.store.get(key)
        except BucketNotFound:
            raise
        except NotFound as exc:
            raise NotFound(f"artifact {artifact_id} not found for task {task} ({self.url(key)} missing)") from exc
        manifest = self._parse_stored(data, key)
        prefix = self._artifact_prefix(task, artifact_id)
        return self._merge_profiles(manifest, [k for k in self.store.list(prefix + PROFILES_DIR + "/")])

    def _merge_profiles(self, manifest: Manifest, profile_keys: builtins.list[str]) -> Manifest:
        for key in profile_keys:
            if not key.endswith(".json"):
                continue
            data, _ = self.store.get(key)
            try:
                profile = HardwareProfile.model_validate_json(data)
            except ValueError as exc:
                raise IntegrityError(f"corrupt registry object: {self.url(key)} is not a valid hardware profile: {str(exc).splitlines()[0]}") from exc
            manifest = manifest.with_profile(profile)
        return manifest

    def is_retired(self, artifact_id: str, task: str | None = None) -> bool:
        task = self._resolve_task(artifact_id, task)
        return self.store.exists(self._artifact_prefix(task, artifact_id) + RETIRED_NAME)

    def list_status(
        self,
        task: str | None = None,
        method: str | None = None,
        hardware_tag: str | None = None,
        include_retired: bool = False,
    ) -> builtins.list[ListedArtifact]:
        """Like `list`, with each artifact's retired flag. One listing per task, then manifest reads."""
        tasks = [validate_name(task, "task")] if task is not None else self.tasks()
        if hardware_tag is not None:
            validate_name(hardware_tag, "hardware tag")
        out: builtins.list[ListedArtifact] = []
        for t in tasks:
            base = f"{self._root}artifacts/{t}/"
            groups: dict[str, builtins.list[str]] = {}
            for key in self.store.list(base):
                aid, _, rest = key[len(base) :].partition("/")
                groups.setdefault(aid, []).append(rest)
            for aid, rests in sorted(groups.items()):
                if MANIFEST_NAME not in rests:
                    continue  # half-published: invisible
                retired = RETIRED_NAME in rests
                if retired and not include_retired:
                    continue
                try:
                    validate_artifact_id(aid)
                except InvalidInput:
                    continue
                try:
                    data, _ = self.store.get(base + aid + "/" + MANIFEST_NAME)
                    manifest = self._parse_stored(data, base + aid + "/" + MANIFEST_NAME)
                    profile_keys = [base + aid + "/" + r for r in rests if r.startswith(PROFILES_DIR + "/")]
                    manifest = self._merge_profiles(manifest, profile_keys)
                except IntegrityError as exc:  # listed as corrupt whatever the filters: it must not go unnoticed
                    out.append(ListedArtifact(artifact_id=aid, task=t, manifest=None, retired=retired, corrupt=str(exc)))
                    continue
                if method is not None and manifest.method != method:
                    continue
                if hardware_tag is not None and manifest.profile(hardware_tag) is None:
                    continue
                out.append(ListedArtifact(artifact_id=aid, task=t, manifest=manifest, retired=retired))
        epoch = datetime.min.replace(tzinfo=timezone.utc)
        out.sort(key=lambda a: (a.task, a.manifest.created_at if a.manifest else epoch, a.artifact_id))
        return out

    def list(
        self,
        task: str | None = None,
        method: str | None = None,
        hardware_tag: str | None = None,
        include_retired: bool = False,
    ) -> builtins.list[Manifest]:
        """Published manifests (profiles merged), oldest first; retired ones only if asked; corrupt ones
        left out (`list_status` reports them)."""
        return [a.manifest for a in self.list_status(task, method, hardware_tag, include_retired) if a.manifest is not None]

    # ------------------------------------------------------------------ integrity

    def verify(self, artifact_id: str, task: str | None = None) -> Manifest:
        """Download every file and re-hash it against the manifest; IntegrityError names the key."""
        manifest = self.get_manifest(artifact_id, task)
        prefix = self._artifact_prefix(manifest.task, artifact_id)
        with tempfile.TemporaryFile() as sink:
            for entry in manifest.files:
                sink.seek(0)
                sink.truncate()
                self._check_download(prefix + entry.path, entry.bytes, entry.sha256, sink)
        return manifest

    def _check_download(self, key: str, size: int, sha256: str, dest) -> None:  # noqa: ANN001
        try:
            got_size, got_sha = self.store.download(key, dest)
        except BucketNotFound:
            raise
        except NotFound as exc:
            raise IntegrityError(f"{self.url(key)}: listed in the manifest but missing from the registry") from exc
        if got_size != size:
            raise IntegrityError(f"{self.url(key)}: {got_size} bytes, manifest says {size}")
        if got_sha != sha256:
            raise IntegrityError(f"{self.url(key)}: sha256 {got_sha[:16]}… does not match manifest {sha256[:16]}…")

    # ------------------------------------------------------------------ local cache

    def _cache_path(self, task: str, artifact_id: str) -> Path:
        validate_name(task, "task")
        validate_artifact_id(artifact_id)
        return self.settings.cache_dir / "artifacts" / task / artifact_id

    def cached(self, artifact_id: str, task: str | None = None) -> Path | None:
        """A verified cached copy (every file's size + sha256 checked against the cached manifest), or None.

        Never touches the network. A cached copy that fails verification is removed.
        """
        validate_artifact_id(artifact_id)
        if task is None:
            root = self.settings.cache_dir / "artifacts"
            hits = sorted(p for p in root.glob(f"*/{artifact_id}") if p.is_dir()) if root.is_dir() else []
            if not hits:
                return None
            task = hits[0].parent.name
        path = self._cache_path(task, artifact_id)
        if not path.is_dir():
            return None
        try:
            manifest = read_artifact_dir(path, verify=True, variants_optional=True)
            if manifest.artifact_id != artifact_id or manifest.task != task:
                raise IntegrityError(f"{path}: cached manifest is for {manifest.task}/{manifest.artifact_id}")
        except (IntegrityError, InvalidInput, NotFound):
            self._discard(path)
            return None
        return path

    def pull(self, artifact_id: str, task: str | None = None, *, allow_offline: bool = False,
             with_variants: bool = True) -> Path:
        """Download into `cache_dir/artifacts/<task>/<id>/`, verifying every sha256 first.

        Files go to a temp folder and are renamed into place only after verification, so nothing
        unverified ever sits at the final path. A cached copy is re-verified before it is returned
        (corrupt -> removed and downloaded again). With `allow_offline`, an unreachable registry
        falls back to a verified cached copy. `with_variants=False` (the service): the mobile variant
        files (model.ort, ...) are not downloaded; a cached copy without them then counts as complete.
        """
        try:
            manifest = self.get_manifest(artifact_id, task)
        except RegistryUnreachable:
            if allow_offline:
                hit = self.cached(artifact_id, task)
                if hit is not None:
                    return hit
            raise
        final = self._cache_path(manifest.task, artifact_id)
        skip = set() if with_variants else variant_paths(manifest)
        if final.is_dir():
            try:
                self._verify_local(final, manifest, optional=variant_paths(manifest) if skip else set())
                write_manifest(final, manifest)  # refresh profiles; files are unchanged
                return final
            except (IntegrityError, NotFound):
                self._discard(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{artifact_id}-", dir=final.parent))
        try:
            prefix = self._artifact_prefix(manifest.task, artifact_id)
            for entry in manifest.files:
                if entry.path in skip:
                    continue
                target = tmp / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as fh:
                    self._check_download(prefix + entry.path, entry.bytes, entry.sha256, fh)
                    os.fsync(fh.fileno())
            write_manifest(tmp, manifest)
            try:
                os.rename(tmp, final)
            except OSError:
                # another puller won the rename; use theirs if it verifies
                self._verify_local(final, manifest, optional=skip)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    @staticmethod
    def _verify_local(path: Path, manifest: Manifest, optional: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Every file present and matching (files in `optional` may be absent)."""
        for entry in manifest.files:
            full = path / entry.path
            if not full.is_file():
                if entry.path in optional:
                    continue
                raise NotFound(f"{full} missing from cache")
            if full.stat().st_size != entry.bytes or sha256_file(full) != entry.sha256:
                raise IntegrityError(f"{full}: cached file does not match manifest")

    @staticmethod
    def _discard(path: Path) -> None:
        """Move a bad cache entry out of the way atomically, then delete it."""
        trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------------ profiles, presign

    def add_profile(self, artifact_id: str, profile: HardwareProfile, task: str | None = None) -> Manifest:
        """Store `profiles/<tag>.json` (replacing an earlier one for that tag) and return the merged manifest."""
        manifest = self.get_manifest(artifact_id, task)
        key = self._artifact_prefix(manifest.task, artifact_id) + f"{PROFILES_DIR}/{validate_name(profile.hardware_tag, 'hardware tag')}.json"
        self.store.put(key, profile.model_dump_json(indent=2).encode())
        return manifest.with_profile(profile)

    def presign(self, artifact_id: str, path: str = MODEL_NAME, task: str | None = None, expires_s: int = 900) -> str:
        """A time-limited HTTPS GET URL for one file of the artifact (for on-device download)."""
        manifest = self.get_manifest(artifact_id, task)
        if manifest.file(path) is None:
            raise NotFound(f"artifact {artifact_id} has no file {path!r}")
        return self.store.presign_get(self._artifact_prefix(manifest.task, artifact_id) + path, expires_s)

    # ------------------------------------------------------------------ aliases

    def read_alias(self, task: str, channel: str) -> AliasSnapshot:
        key = self._alias_key(task, channel)
        try:
            data, etag = self.store.get(key)
        except BucketNotFound:
            raise
        except NotFound as exc:
            raise NotFound(f"alias {task}/{channel} has never been promoted ({self.url(key)} missing)") from exc
        return AliasSnapshot(alias=self._parse_alias(data, key), etag=etag)

    def poll_alias(self, task: str, channel: str, etag: str | None) -> AliasSnapshot | None:
        """The alias if its ETag differs from `etag`, else None (a 304: cheap). NotFound if absent."""
        key = self._alias_key(task, channel)
        try:
            got = self.store.get_if_changed(key, etag)
        except BucketNotFound:
            raise
        except NotFound as exc:
            raise NotFound(f"alias {task}/{channel} has never been promoted ({self.url(key)} missing)") from exc
        if got is None:
            return None
        data, new_etag = got
        return AliasSnapshot(alias=self._parse_alias(data, key), etag=new_etag)

    def _parse_alias(self, data: bytes, key: str) -> Alias:
        try:
            return Alias.model_validate_json(data)
        except ValueError as exc:
            raise IntegrityError(f"corrupt registry object: {self.url(key)} is not a valid alias: {str(exc).splitlines()[0]}") from exc

    def channels(self, task: str) -> builtins.list[str]:
        validate_name(task, "task")
        base = f"{self._root}aliases/{task}/"
        return sorted(k[len(base) : -len(".json")] for k in self.store.list(base) if k.endswith(".json"))

    def _current(self, task: str, channel: str) -> AliasSnapshot | None:
        try:
            return self.read_alias(task, channel)
        except BucketNotFound:
            raise
        except NotFound:
            return None

    def _check_promotable(self, task: str, artifact_ids: builtins.list[str], channel: str | None = None) -> None:
        """Each artifact: not retired, every file's sha256, the generator contract (re-run on the
        downloaded model when the manifest has no passing record for this ONNX Runtime version);
        the set: one channel signature, the same as the set it replaces."""
        from registry.contract import needs_check

        signatures: dict[tuple[int, int], builtins.list[str]] = {}
        for aid in artifact_ids:
            manifest = self.get_manifest(aid, task)
            if self.is_retired(aid, task):
                raise Conflict(f"artifact {aid} ({task}) is retired and cannot be promoted")
            if needs_check(manifest.contract):
                with tempfile.TemporaryDirectory(prefix="pocketgan-promote-") as tmp:
                    self._download_verified(manifest, Path(tmp))
                    self._contract(Path(tmp) / manifest.model_file, manifest)
            else:
                self.verify(aid, task)
            a = manifest.architecture
            signatures.setdefault((a.input_nc, a.output_nc), []).append(aid)
        if len(signatures) > 1:
            parts = "; ".join(f"{i}->{o} channels: {' '.join(ids)}" for (i, o), ids in signatures.items())
            raise ContractViolation(f"a promoted set must share one channel signature, got {parts}")
        if channel is None or not signatures:
            return
        try:  # advisory read: the compare-and-swap in `_swap` re-reads the alias it replaces
            serving = self.read_alias(task, channel).alias.artifacts
            ref = self.get_manifest(serving[0], task).architecture if serving else None
        except BucketNotFound:
            raise
        except (IntegrityError, NotFound):
            return  # never promoted, or the current set is broken: replacing it is the fix
        if ref is None:
            return
        (sig,) = signatures
        if sig != (ref.input_nc, ref.output_nc):
            raise ContractViolation(
                f"{task}/{channel} serves {ref.input_nc}->{ref.output_nc} channels; {' '.join(signatures[sig])} "
                f"is {sig[0]}->{sig[1]}: not a drop-in replacement"
            )

    def _download_verified(self, manifest: Manifest, dest: Path) -> None:
        prefix = self._artifact_prefix(manifest.task, manifest.artifact_id)
        for entry in manifest.files:
            target = dest / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                self._check_download(prefix + entry.path, entry.bytes, entry.sha256, fh)

    def promote(
        self,
        task: str,
        channel: str,
        artifact_ids: builtins.list[str],
        *,
        expect_revision: int | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> Alias:
        """Make `artifact_ids` the promoted set of `task/channel` by compare-and-swap on the alias."""
        self._alias_key(task, channel)
        ids = [validate_artifact_id(a) for a in artifact_ids]
        if not ids:
            raise InvalidInput("promote needs at least one artifact id")
        if len(set(ids)) != len(ids):
            raise InvalidInput(f"duplicate artifact ids in {ids}")
        self._check_promotable(task, ids, channel)
        current = self._current(task, channel)
        old = current.alias if current else None
        history = [*(old.history if old else []), *([old.artifacts] if old else [])][-MAX_ALIAS_HISTORY:]
        return self._swap(task, channel, current, ids, history, "promote", expect_revision, actor, reason)

    def rollback(
        self,
        task: str,
        channel: str,
        *,
        expect_revision: int | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> Alias:
        """Make the previous set current again (revision still increments; successive rollbacks walk back)."""
        self._alias_key(task, channel)
        current = self._current(task, channel)
        if current is None:
            raise Conflict(f"nothing to roll back: alias {task}/{channel} has never been promoted")
        if not current.alias.history:
            raise Conflict(
                f"nothing to roll back: alias {task}/{channel} (revision {current.alias.revision}) has no earlier set",
                current_revision=current.alias.revision,
            )
        previous = current.alias.history[-1]
        self._check_promotable(task, previous)
        return self._swap(
            task, channel, current, previous, current.alias.history[:-1], "rollback", expect_revision, actor, reason
        )

    def _swap(
        self,
        task: str,
        channel: str,
        current: AliasSnapshot | None,
        artifacts: builtins.list[str],
        history: builtins.list[builtins.list[str]],
        action: str,
        expect_revision: int | None,
        actor: str | None,
        reason: str | None,
    ) -> Alias:
        revision = current.alias.revision if current else 0
        if expect_revision is not None and expect_revision != revision:
            raise Conflict(
                f"alias {task}/{channel} is at revision {revision}, not the expected {expect_revision}",
                current_revision=revision,
            )
        actor = actor or self.settings.actor
        new = Alias(
            task=task,
            channel=channel,
            revision=revision + 1,
            artifacts=artifacts,
            history=history,
            updated_by=actor,
        )
        key = self._alias_key(task, channel)
        body = new.model_dump_json(indent=2).encode()
        try:
            if current is None:
                self.store.put(key, body, if_none_match=True)
            else:
                self.store.put(key, body, if_match=current.etag)
        except Conflict as exc:
            now = self._current(task, channel)
            rev = now.alias.revision if now else 0
            raise Conflict(
                f"{action} of {task}/{channel} lost a race; current revision is {rev} (retry with --expect-revision {rev})",
                current_revision=rev,
            ) from exc
        self._append_event(
            AuditEvent(
                event_id=uuid.uuid4().hex,
                task=task,
                channel=channel,
                action=action,  # type: ignore[arg-type]
                actor=actor,
                at=new.updated_at,
                from_set=list(current.alias.artifacts) if current else [],
                to_set=list(artifacts),
                from_revision=revision if current else None,
                to_revision=new.revision,
                reason=reason,
            )
        )
        return new

    # ------------------------------------------------------------------ audit log

    def _append_event(self, event: AuditEvent) -> str:
        key = f"{self._events_prefix(event.task)}{_utc_stamp(event.at)}-{event.event_id}.json"
        self.store.put(key, event.model_dump_json(indent=2).encode(), if_none_match=True)
        return key

    def history(self, task: str, channel: str | None = None) -> builtins.list[AuditEvent]:
        """Audit events of a task (optionally one channel), oldest first; corrupt ones left out
        (`history_status` reports them)."""
        return self.history_status(task, channel)[0]

    def history_status(
        self, task: str, channel: str | None = None
    ) -> tuple[builtins.list[AuditEvent], builtins.list[CorruptObject]]:
        """(audit events oldest first, events that do not parse): one bad object does not hide the log."""
        if channel is not None:
            validate_name(channel, "channel")
        events, corrupt = [], []
        for key in self.store.list(self._events_prefix(task)):
            data, _ = self.store.get(key)
            try:
                event = AuditEvent.model_validate_json(data)
            except ValueError as exc:
                corrupt.append(CorruptObject(key=self.url(key), reason=f"not a valid audit event: {str(exc).splitlines()[0]}"))
                continue
            if channel is None or event.channel == channel:
                events.append(event)
        events.sort(key=lambda e: (e.at, e.event_id))
        return events, corrupt

    # ------------------------------------------------------------------ retire

    def retire(self, artifact_id: str, task: str | None = None, actor: str | None = None) -> Tombstone:
        """Tombstone an artifact: hidden from `list`, never promotable again. Refused while promoted.
        Works on an artifact whose manifest is corrupt (that is when an operator needs it most)."""
        task = self._resolve_task(artifact_id, task)
        if not self.store.exists(self._manifest_key(task, artifact_id)):
            raise NotFound(f"artifact {artifact_id} not found for task {task}")
        self._refuse_if_promoted(task, artifact_id)
        key = self._artifact_prefix(task, artifact_id) + RETIRED_NAME
        actor = actor or self.settings.actor
        stone = Tombstone(artifact_id=artifact_id, task=task, retired_at=datetime.now(timezone.utc), retired_by=actor)
        try:
            self.store.put(key, stone.model_dump_json(indent=2).encode(), if_none_match=True)
        except Conflict:
            return stone  # already retired: idempotent
        try:
            # a promote may have raced us between the check and the tombstone
            self._refuse_if_promoted(task, artifact_id)
        except Conflict:
            self.store.delete(key)
            raise
        self._append_event(
            AuditEvent(event_id=uuid.uuid4().hex, task=task, action="retire", actor=actor, from_set=[artifact_id])
        )
        return stone

    def _refuse_if_promoted(self, task: str, artifact_id: str) -> None:
        for channel in self.channels(task):
            snap = self._current(task, channel)
            if snap is not None and artifact_id in snap.alias.artifacts:
                raise Conflict(
                    f"artifact {artifact_id} is promoted in {task}/{channel} (revision {snap.alias.revision}); "
                    "promote a set without it before retiring"
                )


def dump_json(obj: Any) -> str:
    """JSON for CLI output (pydantic models and lists of them)."""
    if isinstance(obj, BaseModel):
        return obj.model_dump_json(indent=2)
    if isinstance(obj, builtins.list):
        return json.dumps([o.model_dump(mode="json") if isinstance(o, BaseModel) else o for o in obj], indent=2)
    return json.dumps(obj, indent=2, default=str)
