"""Registry documents and results: aliases and audit events (what promotion writes and the service
follows), tombstones, and what publish / list return."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from registry.manifest import ArtifactId, Manifest, TaskName, utcnow
from registry.names import validate_name

MAX_ALIAS_HISTORY = 50


class Alias(BaseModel):
    """`aliases/<task>/<channel>.json`: the promoted set, updated only by compare-and-swap.

    `revision` counts updates (1 = first promotion) and is what `--expect-revision` takes;
    `history` keeps earlier sets, newest last, so rollback needs no event replay.
    """

    model_config = ConfigDict(extra="forbid")

    task: TaskName
    channel: str
    revision: int = Field(ge=1)
    artifacts: list[ArtifactId]
    history: list[list[ArtifactId]] = Field(default_factory=list)
    updated_at: datetime = Field(default_factory=utcnow)
    updated_by: str

    def model_post_init(self, __context: object) -> None:
        validate_name(self.channel, "channel")


class AliasSnapshot(BaseModel):
    """An alias as read, with the ETag that a compare-and-swap or a cheap poll needs."""

    alias: Alias
    etag: str


class AuditEvent(BaseModel):
    """`events/<task>/<timestamp>-<uuid>.json`: append-only, written with If-None-Match: *."""

    model_config = ConfigDict(extra="forbid")

    event_id: str
    task: TaskName
    channel: str | None = None
    action: Literal["promote", "rollback", "retire", "publish"]
    actor: str
    at: datetime = Field(default_factory=utcnow)
    from_set: list[str] = Field(default_factory=list)
    to_set: list[str] = Field(default_factory=list)
    from_revision: int | None = None
    to_revision: int | None = None
    reason: str | None = None


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
    """`artifacts/<task>/<id>/retired.json`."""

    artifact_id: str
    task: str
    retired_at: datetime
    retired_by: str
