"""Aliases and the lifecycle they guard: promote / roll back by compare-and-swap on
`aliases/<task>/<channel>.json`, retire (refused while promoted); each change is an audit event."""

from __future__ import annotations

import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from registry.audit import AuditLog
from registry.artifacts import Artifacts
from registry.errors import Conflict, ContractViolation, IntegrityError, InvalidInput, MissingObject
from registry.layout import validate_artifact_id
from registry.publish import check_contract
from registry.records import MAX_ALIAS_HISTORY, Alias, AliasSnapshot, AuditEvent, Tombstone


class Aliases:
    def __init__(self, artifacts: Artifacts, audit: AuditLog, actor: str,
                 read_current: Callable[[str, str], AliasSnapshot | None] | None = None) -> None:
        """`read_current`: the read a compare-and-swap starts from (default `current`); a seam where a
        test holds concurrent promoters so that they all write against the same ETag."""
        self.artifacts, self.audit, self.actor = artifacts, audit, actor
        self.store, self.layout = artifacts.store, artifacts.layout
        self._read_current = read_current or self.current

    # ------------------------------------------------------------------ read

    def read(self, task: str, channel: str) -> AliasSnapshot:
        """The alias and its ETag; MissingObject if it was never promoted."""
        key = self.layout.alias_key(task, channel)
        try:
            data, etag = self.store.get(key)
        except MissingObject as exc:
            raise MissingObject(f"alias {task}/{channel} has never been promoted ({self.store.url(key)} missing)") from exc
        return AliasSnapshot(alias=self._parse(data, key), etag=etag)

    def poll(self, task: str, channel: str, etag: str | None) -> AliasSnapshot | None:
        """The alias if its ETag differs from `etag`, else None (a 304: cheap). MissingObject if absent."""
        key = self.layout.alias_key(task, channel)
        try:
            got = self.store.get_if_changed(key, etag)
        except MissingObject as exc:
            raise MissingObject(f"alias {task}/{channel} has never been promoted ({self.store.url(key)} missing)") from exc
        if got is None:
            return None
        data, new_etag = got
        return AliasSnapshot(alias=self._parse(data, key), etag=new_etag)

    def _parse(self, data: bytes, key: str) -> Alias:
        try:
            return Alias.model_validate_json(data)
        except ValueError as exc:
            raise IntegrityError(f"corrupt registry object: {self.store.url(key)} is not a valid alias: "
                                 f"{str(exc).splitlines()[0]}") from exc

    def channels(self, task: str) -> list[str]:
        base = self.layout.aliases_prefix(task)
        return sorted(k[len(base) : -len(".json")] for k in self.store.list(base) if k.endswith(".json"))

    def current(self, task: str, channel: str) -> AliasSnapshot | None:
        try:
            return self.read(task, channel)
        except MissingObject:
            return None

    # ------------------------------------------------------------------ promote / rollback

    def check_promotable(self, task: str, artifact_ids: list[str], channel: str | None = None) -> None:
        """Each artifact: not retired, every file's sha256, the generator contract (re-run on the
        downloaded model when the manifest has no passing record for this ONNX Runtime version);
        the set: one channel signature, the same as the set it replaces."""
        from registry.contract import needs_check

        signatures: dict[tuple[int, int], list[str]] = {}
        for aid in artifact_ids:
            manifest = self.artifacts.get_manifest(aid, task)
            if self.artifacts.is_retired(aid, task):
                raise Conflict(f"artifact {aid} ({task}) is retired and cannot be promoted")
            if needs_check(manifest.contract):
                with tempfile.TemporaryDirectory(prefix="pocketgan-promote-") as tmp:
                    self.artifacts.download_all(manifest, Path(tmp))
                    check_contract(Path(tmp) / manifest.model_file, manifest)
            else:
                self.artifacts.verify(aid, task)
            a = manifest.architecture
            signatures.setdefault((a.input_nc, a.output_nc), []).append(aid)
        if len(signatures) > 1:
            parts = "; ".join(f"{i}->{o} channels: {' '.join(ids)}" for (i, o), ids in signatures.items())
            raise ContractViolation(f"a promoted set must share one channel signature, got {parts}")
        if channel is None or not signatures:
            return
        try:  # advisory read: the compare-and-swap in `_swap` re-reads the alias it replaces
            serving = self.read(task, channel).alias.artifacts
            ref = self.artifacts.get_manifest(serving[0], task).architecture if serving else None
        except (IntegrityError, MissingObject):
            return  # never promoted, or the current set is broken: replacing it is the fix
        if ref is None:
            return
        (sig,) = signatures
        if sig != (ref.input_nc, ref.output_nc):
            raise ContractViolation(
                f"{task}/{channel} serves {ref.input_nc}->{ref.output_nc} channels; {' '.join(signatures[sig])} "
                f"is {sig[0]}->{sig[1]}: not a drop-in replacement"
            )

    def promote(self, task: str, channel: str, artifact_ids: list[str], *, expect_revision: int | None = None,
                actor: str | None = None, reason: str | None = None) -> Alias:
        """Make `artifact_ids` the promoted set of `task/channel` by compare-and-swap on the alias."""
        self.layout.alias_key(task, channel)
        ids = [validate_artifact_id(a) for a in artifact_ids]
        if not ids:
            raise InvalidInput("promote needs at least one artifact id")
        if len(set(ids)) != len(ids):
            raise InvalidInput(f"duplicate artifact ids in {ids}")
        self.check_promotable(task, ids, channel)
        current = self._read_current(task, channel)
        old = current.alias if current else None
        history = [*(old.history if old else []), *([old.artifacts] if old else [])][-MAX_ALIAS_HISTORY:]
        return self._swap(task, channel, current, ids, history, "promote", expect_revision, actor, reason)

    def rollback(self, task: str, channel: str, *, expect_revision: int | None = None,
                 actor: str | None = None, reason: str | None = None) -> Alias:
        """Make the previous set current again (revision still increments; successive rollbacks walk back)."""
        self.layout.alias_key(task, channel)
        current = self._read_current(task, channel)
        if current is None:
            raise Conflict(f"nothing to roll back: alias {task}/{channel} has never been promoted")
        if not current.alias.history:
            raise Conflict(
                f"nothing to roll back: alias {task}/{channel} (revision {current.alias.revision}) has no earlier set",
                current_revision=current.alias.revision,
            )
        previous = current.alias.history[-1]
        self.check_promotable(task, previous)
        return self._swap(
            task, channel, current, previous, current.alias.history[:-1], "rollback", expect_revision, actor, reason
        )

    def _swap(
        self,
        task: str,
        channel: str,
        current: AliasSnapshot | None,
        artifacts: list[str],
        history: list[list[str]],
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
        actor = actor or self.actor
        new = Alias(task=task, channel=channel, revision=revision + 1, artifacts=artifacts, history=history,
                    updated_by=actor)
        key = self.layout.alias_key(task, channel)
        body = new.model_dump_json(indent=2).encode()
        try:
            if current is None:
                self.store.put(key, body, if_none_match=True)
            else:
                self.store.put(key, body, if_match=current.etag)
        except Conflict as exc:
            now = self._read_current(task, channel)
            rev = now.alias.revision if now else 0
            raise Conflict(
                f"{action} of {task}/{channel} lost a race; current revision is {rev} (retry with --expect-revision {rev})",
                current_revision=rev,
            ) from exc
        self.audit.append(
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

    # ------------------------------------------------------------------ retire

    def retire(self, artifact_id: str, task: str | None = None, actor: str | None = None) -> Tombstone:
        """Tombstone an artifact: hidden from `list`, never promotable again. Refused while promoted.
        Works on an artifact whose manifest is corrupt (that is when an operator needs it most)."""
        task = self.artifacts.resolve_task(artifact_id, task)
        if not self.store.exists(self.layout.manifest_key(task, artifact_id)):
            raise MissingObject(f"artifact {artifact_id} not found for task {task}")
        self._refuse_if_promoted(task, artifact_id)
        key = self.layout.retired_key(task, artifact_id)
        actor = actor or self.actor
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
        self.audit.append(
            AuditEvent(event_id=uuid.uuid4().hex, task=task, action="retire", actor=actor, from_set=[artifact_id])
        )
        return stone

    def _refuse_if_promoted(self, task: str, artifact_id: str) -> None:
        for channel in self.channels(task):
            snap = self._read_current(task, channel)
            if snap is not None and artifact_id in snap.alias.artifacts:
                raise Conflict(
                    f"artifact {artifact_id} is promoted in {task}/{channel} (revision {snap.alias.revision}); "
                    "promote a set without it before retiring"
                )
