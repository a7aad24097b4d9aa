"""Where everything lives in the bucket (see DESIGN.md): the only place that builds keys.

    artifacts/<task>/<id>/model.onnx (+ other files)   immutable, uploaded first
    artifacts/<task>/<id>/manifest.json                written last with If-None-Match: *
    artifacts/<task>/<id>/profiles/<tag>.json          hardware profiles added after publish
    artifacts/<task>/<id>/retired.json                 tombstone (hidden from `list` by default)
    aliases/<task>/<channel>.json                      promoted set, updated with If-Match (CAS)
    events/<task>/<UTC timestamp>-<uuid>.json          append-only audit, If-None-Match: *

Every name is validated (`registry.names`) before it becomes part of a key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from registry.artifact import MANIFEST_NAME
from registry.errors import InvalidInput
from registry.manifest import ARTIFACT_ID_LENGTH
from registry.names import validate_name

RETIRED_NAME = "retired.json"
PROFILES_DIR = "profiles"


def validate_artifact_id(value: str) -> str:
    validate_name(value, "artifact id")
    if not re.fullmatch(rf"[0-9a-f]{{{ARTIFACT_ID_LENGTH}}}", value):
        raise InvalidInput(f"invalid artifact id {value!r}: expected {ARTIFACT_ID_LENGTH} lowercase hex digits")
    return value


def utc_stamp(when: datetime) -> str:
    """Sortable, key-safe timestamp: 20260123T045501.123456Z."""
    return when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def is_reserved(path: str) -> bool:
    """File names an artifact may not carry: the registry writes them itself."""
    return path in (MANIFEST_NAME, RETIRED_NAME) or path.startswith(PROFILES_DIR + "/")


@dataclass(frozen=True)
class Layout:
    """Keys under one bucket prefix (`root` is "" or ends with "/")."""

    root: str

    @classmethod
    def under(cls, prefix: str) -> "Layout":
        return cls(f"{prefix}/" if prefix else "")

    def artifacts_root(self) -> str:
        return f"{self.root}artifacts/"

    def task_artifacts(self, task: str) -> str:
        return f"{self.root}artifacts/{validate_name(task, 'task')}/"

    def artifact_prefix(self, task: str, artifact_id: str) -> str:
        validate_name(task, "task")
        validate_artifact_id(artifact_id)
        return f"{self.root}artifacts/{task}/{artifact_id}/"

    def manifest_key(self, task: str, artifact_id: str) -> str:
        return self.artifact_prefix(task, artifact_id) + MANIFEST_NAME

    def retired_key(self, task: str, artifact_id: str) -> str:
        return self.artifact_prefix(task, artifact_id) + RETIRED_NAME

    def profiles_prefix(self, task: str, artifact_id: str) -> str:
        return self.artifact_prefix(task, artifact_id) + PROFILES_DIR + "/"

    def profile_key(self, task: str, artifact_id: str, hardware_tag: str) -> str:
        return self.profiles_prefix(task, artifact_id) + f"{validate_name(hardware_tag, 'hardware tag')}.json"

    def aliases_prefix(self, task: str) -> str:
        return f"{self.root}aliases/{validate_name(task, 'task')}/"

    def alias_key(self, task: str, channel: str) -> str:
        validate_name(task, "task")
        validate_name(channel, "channel")
        return f"{self.root}aliases/{task}/{channel}.json"

    def events_prefix(self, task: str) -> str:
        return f"{self.root}events/{validate_name(task, 'task')}/"

    def event_key(self, task: str, at: datetime, event_id: str) -> str:
        return f"{self.events_prefix(task)}{utc_stamp(at)}-{event_id}.json"
