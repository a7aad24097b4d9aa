"""The append-only audit log: one object per event under `events/<task>/`, created with If-None-Match."""

from __future__ import annotations

from registry.layout import Layout
from registry.names import validate_name
from registry.records import AuditEvent, CorruptObject
from registry.store import ObjectStore


class AuditLog:
    def __init__(self, store: ObjectStore, layout: Layout) -> None:
        self.store, self.layout = store, layout

    def append(self, event: AuditEvent) -> str:
        key = self.layout.event_key(event.task, event.at, event.event_id)
        self.store.put(key, event.model_dump_json(indent=2).encode(), if_none_match=True)
        return key

    def read(self, task: str, channel: str | None = None) -> tuple[list[AuditEvent], list[CorruptObject]]:
        """(events oldest first, events that do not parse): one bad object does not hide the log."""
        if channel is not None:
            validate_name(channel, "channel")
        events, corrupt = [], []
        for key in self.store.list(self.layout.events_prefix(task)):
            data, _ = self.store.get(key)
            try:
                event = AuditEvent.model_validate_json(data)
            except ValueError as exc:
                corrupt.append(CorruptObject(key=self.store.url(key),
                                             reason=f"not a valid audit event: {str(exc).splitlines()[0]}"))
                continue
            if channel is None or event.channel == channel:
                events.append(event)
        events.sort(key=lambda e: (e.at, e.event_id))
        return events, corrupt
