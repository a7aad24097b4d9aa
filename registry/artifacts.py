"""Reading published artifacts: manifests (with hardware profiles merged in), listing, verification,
downloads checked against the manifest's sha256, added profiles, presigned URLs.

An artifact without manifest.json is invisible (a half-finished upload).
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from registry.artifact import MANIFEST_NAME, MODEL_NAME
from registry.errors import IntegrityError, InvalidInput, MissingObject, NotFound
from registry.layout import PROFILES_DIR, RETIRED_NAME, Layout, validate_artifact_id
from registry.manifest import HardwareProfile, Manifest
from registry.names import validate_name
from registry.records import ListedArtifact
from registry.store import ObjectStore


class Artifacts:
    def __init__(self, store: ObjectStore, layout: Layout) -> None:
        self.store, self.layout = store, layout

    # ------------------------------------------------------------------ finding

    def tasks(self) -> list[str]:
        """Tasks that have at least one artifact folder."""
        return self.store.list_dirs(self.layout.artifacts_root())

    def find_task(self, artifact_id: str) -> str:
        validate_artifact_id(artifact_id)
        found = [t for t in self.tasks() if self.store.exists(self.layout.manifest_key(t, artifact_id))]
        if not found:
            raise NotFound(f"artifact {artifact_id} not found in {self.store.url(self.layout.root)}")
        if len(found) > 1:
            raise InvalidInput(f"artifact {artifact_id} exists under several tasks ({', '.join(found)}); pass --task")
        return found[0]

    def resolve_task(self, artifact_id: str, task: str | None) -> str:
        validate_artifact_id(artifact_id)
        return validate_name(task, "task") if task is not None else self.find_task(artifact_id)

    # ------------------------------------------------------------------ manifests

    def parse_stored(self, data: bytes, key: str) -> Manifest:
        """A manifest read back from the bucket; one that no longer validates is an integrity failure (exit 5)."""
        try:
            return Manifest.parse(data, source=self.store.url(key))
        except InvalidInput as exc:
            raise IntegrityError(f"corrupt registry object: {exc}") from exc

    def existing(self, task: str, artifact_id: str) -> Manifest | None:
        """The stored manifest as published (no profiles merged), or None if there is none."""
        key = self.layout.manifest_key(task, artifact_id)
        try:
            data, _ = self.store.get(key)
        except MissingObject:
            return None
        return self.parse_stored(data, key)

    def get_manifest(self, artifact_id: str, task: str | None = None) -> Manifest:
        """The manifest with its hardware profiles merged in (retired artifacts are still readable)."""
        task = self.resolve_task(artifact_id, task)
        key = self.layout.manifest_key(task, artifact_id)
        try:
            data, _ = self.store.get(key)
        except MissingObject as exc:
            raise MissingObject(f"artifact {artifact_id} not found for task {task} ({self.store.url(key)} missing)") from exc
        manifest = self.parse_stored(data, key)
        return self.merge_profiles(manifest, self.store.list(self.layout.profiles_prefix(task, artifact_id)))

    def merge_profiles(self, manifest: Manifest, profile_keys: list[str]) -> Manifest:
        """Profiles stored beside the manifest (added after publish) replace the manifest's for that tag."""
        for key in profile_keys:
            if not key.endswith(".json"):
                continue
            data, _ = self.store.get(key)
            try:
                profile = HardwareProfile.model_validate_json(data)
            except ValueError as exc:
                raise IntegrityError(f"corrupt registry object: {self.store.url(key)} is not a valid hardware profile: "
                                     f"{str(exc).splitlines()[0]}") from exc
            manifest = manifest.with_profile(profile)
        return manifest

    def is_retired(self, artifact_id: str, task: str | None = None) -> bool:
        task = self.resolve_task(artifact_id, task)
        return self.store.exists(self.layout.retired_key(task, artifact_id))

    def list_status(
        self,
        task: str | None = None,
        method: str | None = None,
        hardware_tag: str | None = None,
        include_retired: bool = False,
    ) -> list[ListedArtifact]:
        """Each artifact with its retired flag, corrupt ones included. One listing per task, then manifest reads."""
        tasks = [validate_name(task, "task")] if task is not None else self.tasks()
        if hardware_tag is not None:
            validate_name(hardware_tag, "hardware tag")
        out: list[ListedArtifact] = []
        for t in tasks:
            base = self.layout.task_artifacts(t)
            groups: dict[str, list[str]] = {}
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
                    manifest = self.parse_stored(data, base + aid + "/" + MANIFEST_NAME)
                    profile_keys = [base + aid + "/" + r for r in rests if r.startswith(PROFILES_DIR + "/")]
                    manifest = self.merge_profiles(manifest, profile_keys)
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

    # ------------------------------------------------------------------ bytes

    def verify(self, artifact_id: str, task: str | None = None) -> Manifest:
        """Download every file and re-hash it against the manifest; IntegrityError names the key."""
        manifest = self.get_manifest(artifact_id, task)
        with tempfile.TemporaryFile() as sink:
            for entry in manifest.files:
                sink.seek(0)
                sink.truncate()
                self.download(manifest, entry.path, entry.bytes, entry.sha256, sink)
        return manifest

    def download(self, manifest: Manifest, path: str, size: int, sha256: str, dest: BinaryIO) -> None:
        """One file of the artifact into `dest`, checked against its size and sha256."""
        key = self.layout.artifact_prefix(manifest.task, manifest.artifact_id) + path
        try:
            got_size, got_sha = self.store.download(key, dest)
        except MissingObject as exc:
            raise IntegrityError(f"{self.store.url(key)}: listed in the manifest but missing from the registry") from exc
        if got_size != size:
            raise IntegrityError(f"{self.store.url(key)}: {got_size} bytes, manifest says {size}")
        if got_sha != sha256:
            raise IntegrityError(f"{self.store.url(key)}: sha256 {got_sha[:16]}… does not match manifest {sha256[:16]}…")

    def download_all(self, manifest: Manifest, dest: Path) -> None:
        """Every file of the artifact into `dest`, each verified."""
        for entry in manifest.files:
            target = dest / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                self.download(manifest, entry.path, entry.bytes, entry.sha256, fh)

    # ------------------------------------------------------------------ profiles, presign

    def add_profile(self, artifact_id: str, profile: HardwareProfile, task: str | None = None) -> Manifest:
        """Store `profiles/<tag>.json` (replacing an earlier one for that tag) and return the merged manifest.

        A profile equal to the one the artifact already has for that tag (e.g. the one its manifest
        was published with) is not stored again."""
        manifest = self.get_manifest(artifact_id, task)
        key = self.layout.profile_key(manifest.task, artifact_id, profile.hardware_tag)
        if manifest.profile(profile.hardware_tag) != profile:
            self.store.put(key, profile.model_dump_json(indent=2).encode())
        return manifest.with_profile(profile)

    def presign(self, artifact_id: str, path: str = MODEL_NAME, task: str | None = None, expires_s: int = 900) -> str:
        """A time-limited HTTPS GET URL for one file of the artifact (for on-device download)."""
        manifest = self.get_manifest(artifact_id, task)
        if manifest.file(path) is None:
            raise NotFound(f"artifact {artifact_id} has no file {path!r}")
        return self.store.presign_get(self.layout.artifact_prefix(manifest.task, artifact_id) + path, expires_s)
