"""The registry's front door: publish, list, verify, pull, profile, promote, roll back, retire.

A thin facade over cohesive parts, each usable and testable alone:

| module                 | what it owns                                                          |
|------------------------|-----------------------------------------------------------------------|
| `registry.layout`      | every key in the bucket (the S3 layout of DESIGN.md), id validation    |
| `registry.artifacts`   | reading manifests (profiles merged), listing, verified downloads      |
| `registry.publish`     | publish a folder or a bare ONNX file (contract first, manifest last)  |
| `registry.aliases`     | aliases: read / poll, promote / roll back (CAS), retire               |
| `registry.audit`       | the append-only audit log                                             |
| `registry.cache`       | the local verified cache                                              |
| `registry.store`       | the object store (boto3)                                              |

Offline use (the service): `pull(id, task, allow_offline=True)` returns a verified cached copy
when S3 is unreachable; `cached(id, task)` never touches the network.
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel

from registry.aliases import Aliases
from registry.artifact import MODEL_NAME
from registry.artifacts import Artifacts
from registry.audit import AuditLog
from registry.cache import LocalCache
from registry.config import RegistrySettings
from registry.errors import RegistryUnreachable
from registry.layout import Layout, validate_artifact_id
from registry.manifest import Architecture, HardwareProfile, Manifest, Quality
from registry.publish import Publisher
from registry.records import Alias, AliasSnapshot, AuditEvent, CorruptObject, ListedArtifact, PublishResult, Tombstone
from registry.store import ObjectStore, S3ObjectStore

__all__ = ["CorruptObject", "ListedArtifact", "PublishResult", "Registry", "Tombstone", "dump_json",
           "validate_artifact_id"]


class Registry:
    """The model registry. Thread-safe for concurrent calls (boto3 clients are)."""

    def __init__(self, settings: RegistrySettings | None = None, store: ObjectStore | None = None) -> None:
        self.settings = settings or RegistrySettings.from_env()
        self.bucket, self.prefix = self.settings.location()
        self.store: ObjectStore = store or S3ObjectStore(self.settings, self.bucket)
        self.layout = Layout.under(self.prefix)
        self.artifacts = Artifacts(self.store, self.layout)
        self.audit = AuditLog(self.store, self.layout)
        self.publisher = Publisher(self.artifacts, self.audit, self.settings.actor)
        self.aliases = Aliases(self.artifacts, self.audit, self.settings.actor, read_current=self._current)
        self.cache = LocalCache(self.settings.cache_dir)

    @classmethod
    def from_env(cls) -> "Registry":
        return cls(RegistrySettings.from_env())

    def url(self, key: str = "") -> str:
        return self.store.url(key)

    # kept for callers that predate `layout` (tests/test_contract.py, registry/cli.py); use `layout`
    def _manifest_key(self, task: str, artifact_id: str) -> str:
        return self.layout.manifest_key(task, artifact_id)

    def _events_prefix(self, task: str) -> str:
        return self.layout.events_prefix(task)

    def _current(self, task: str, channel: str) -> AliasSnapshot | None:
        """The alias a promote / rollback / retire starts from, or None (a seam for race tests)."""
        return self.aliases.current(task, channel)

    # ------------------------------------------------------------------ publish

    def publish_dir(self, artifact_dir: Path, *, variants: Iterable[str] = ()) -> PublishResult:
        """See `registry.publish.Publisher.publish_dir`."""
        return self.publisher.publish_dir(artifact_dir, variants=variants)

    def publish_model(self, onnx_path: Path, *, task: str, method: str, parent: str | None = None,
                      quality: Quality | None = None, job: dict[str, Any] | None = None,
                      architecture: Architecture | None = None, input_nc: int = 3, output_nc: int = 3,
                      variants: Iterable[str] = ()) -> PublishResult:
        """See `registry.publish.Publisher.publish_model`."""
        return self.publisher.publish_model(onnx_path, task=task, method=method, parent=parent, quality=quality,
                                            job=job, architecture=architecture, input_nc=input_nc,
                                            output_nc=output_nc, variants=variants)

    # ------------------------------------------------------------------ read

    def tasks(self) -> builtins.list[str]:
        """Tasks that have at least one artifact folder."""
        return self.artifacts.tasks()

    def get_manifest(self, artifact_id: str, task: str | None = None) -> Manifest:
        """The manifest with its hardware profiles merged in (retired artifacts are still readable)."""
        return self.artifacts.get_manifest(artifact_id, task)

    def is_retired(self, artifact_id: str, task: str | None = None) -> bool:
        return self.artifacts.is_retired(artifact_id, task)

    def list_status(self, task: str | None = None, method: str | None = None, hardware_tag: str | None = None,
                    include_retired: bool = False) -> builtins.list[ListedArtifact]:
        """Like `list`, with each artifact's retired flag and corrupt objects reported."""
        return self.artifacts.list_status(task, method, hardware_tag, include_retired)

    def list(self, task: str | None = None, method: str | None = None, hardware_tag: str | None = None,
             include_retired: bool = False) -> builtins.list[Manifest]:
        """Published manifests (profiles merged), oldest first; retired ones only if asked; corrupt ones
        left out (`list_status` reports them)."""
        return [a.manifest for a in self.list_status(task, method, hardware_tag, include_retired) if a.manifest is not None]

    def verify(self, artifact_id: str, task: str | None = None) -> Manifest:
        """Download every file and re-hash it against the manifest; IntegrityError names the key."""
        return self.artifacts.verify(artifact_id, task)

    def add_profile(self, artifact_id: str, profile: HardwareProfile, task: str | None = None) -> Manifest:
        """Store a hardware profile for the artifact and return the merged manifest."""
        return self.artifacts.add_profile(artifact_id, profile, task)

    def presign(self, artifact_id: str, path: str = MODEL_NAME, task: str | None = None, expires_s: int = 900) -> str:
        """A time-limited HTTPS GET URL for one file of the artifact (for on-device download)."""
        return self.artifacts.presign(artifact_id, path, task, expires_s)

    # ------------------------------------------------------------------ local cache

    def cached(self, artifact_id: str, task: str | None = None) -> Path | None:
        """A verified cached copy, or None; never touches the network (`registry.cache`)."""
        return self.cache.cached(artifact_id, task)

    def pull(self, artifact_id: str, task: str | None = None, *, allow_offline: bool = False,
             with_variants: bool = True) -> Path:
        """Download into `cache_dir/artifacts/<task>/<id>/`, verifying every sha256 first.

        A cached copy is re-verified before it is returned (corrupt -> removed and downloaded
        again). With `allow_offline`, an unreachable registry falls back to a verified cached copy.
        `with_variants=False` (the service): the mobile variant files (model.ort, ...) are not
        downloaded; a cached copy without them then counts as complete.
        """
        try:
            manifest = self.get_manifest(artifact_id, task)
        except RegistryUnreachable:
            if allow_offline:
                hit = self.cached(artifact_id, task)
                if hit is not None:
                    return hit
            raise
        hit = self.cache.reuse(manifest, variants_optional=not with_variants)
        if hit is not None:
            return hit
        return self.cache.fill(manifest, not with_variants, lambda entry, fh: self.artifacts.download(
            manifest, entry.path, entry.bytes, entry.sha256, fh))

    # ------------------------------------------------------------------ aliases, lifecycle, audit

    def read_alias(self, task: str, channel: str) -> AliasSnapshot:
        return self.aliases.read(task, channel)

    def poll_alias(self, task: str, channel: str, etag: str | None) -> AliasSnapshot | None:
        """The alias if its ETag differs from `etag`, else None (a 304: cheap). NotFound if absent."""
        return self.aliases.poll(task, channel, etag)

    def channels(self, task: str) -> builtins.list[str]:
        return self.aliases.channels(task)

    def promote(self, task: str, channel: str, artifact_ids: builtins.list[str], *,
                expect_revision: int | None = None, actor: str | None = None, reason: str | None = None) -> Alias:
        """Make `artifact_ids` the promoted set of `task/channel` by compare-and-swap on the alias."""
        return self.aliases.promote(task, channel, artifact_ids, expect_revision=expect_revision, actor=actor,
                                    reason=reason)

    def rollback(self, task: str, channel: str, *, expect_revision: int | None = None, actor: str | None = None,
                 reason: str | None = None) -> Alias:
        """Make the previous set current again (revision still increments; successive rollbacks walk back)."""
        return self.aliases.rollback(task, channel, expect_revision=expect_revision, actor=actor, reason=reason)

    def retire(self, artifact_id: str, task: str | None = None, actor: str | None = None) -> Tombstone:
        """Tombstone an artifact: hidden from `list`, never promotable again. Refused while promoted."""
        return self.aliases.retire(artifact_id, task, actor)

    def history(self, task: str, channel: str | None = None) -> builtins.list[AuditEvent]:
        """Audit events of a task (optionally one channel), oldest first; corrupt ones left out
        (`history_status` reports them)."""
        return self.audit.read(task, channel)[0]

    def history_status(self, task: str, channel: str | None = None
                       ) -> tuple[builtins.list[AuditEvent], builtins.list[CorruptObject]]:
        """(audit events oldest first, events that do not parse): one bad object does not hide the log."""
        return self.audit.read(task, channel)


def dump_json(obj: Any) -> str:
    """JSON for CLI output (pydantic models and lists of them)."""
    if isinstance(obj, BaseModel):
        return obj.model_dump_json(indent=2)
    if isinstance(obj, builtins.list):
        return json.dumps([o.model_dump(mode="json") if isinstance(o, BaseModel) else o for o in obj], indent=2)
    return json.dumps(obj, indent=2, default=str)
