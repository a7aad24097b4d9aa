"""Per-device operator latency tables (once-for-all style lookup tables) kept in the registry.

``pocketgan profile-ops --hardware-tag TAG`` measures every block shape of the student design
space on the device it runs on and stores the table at ``<prefix>/optables/<TAG>.json``. A
compression job running anywhere reads the table for the tag it compresses for and predicts a
sub-network's latency as the sum of its blocks' entries (``compression_jobs.latency_table``),
so the search can target a device the job does not run on.

The registry only stores and validates the table; what an entry key means (which layer, which
widths) belongs to the code that builds and reads it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError

from registry.errors import InvalidInput, NotFound
from registry.names import validate_name

if TYPE_CHECKING:  # pragma: no cover
    from registry.client import Registry

OPTABLE_SCHEMA = 1
MAX_OPTABLE_BYTES = 8 * 2**20
"""A table for the default design space is ~10 KB; anything past this is refused unread."""


class OpTable(BaseModel):
    """Measured p50 latency (ms) per block shape, for one device, resolution and thread count."""

    schema_version: int = OPTABLE_SCHEMA
    hardware_tag: str
    family: str = Field(description="the design space the keys describe, e.g. mobile-resnet")
    resolution: int = Field(gt=0, description="square input side the entries were measured at")
    batch: int = Field(default=1, gt=0)
    threads: int | None = Field(default=None, description="ONNX Runtime intra-op threads (None = ORT default)")
    runtime: str = "onnxruntime"
    runtime_version: str
    execution_provider: str
    host: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    runs: int = Field(gt=0, description="timed runs per entry (p50 taken)")
    export: dict[str, bool | int | str] = Field(default_factory=dict, description="export choices the entries were measured with")
    design: dict[str, int | str | list[int] | list[list[int]]] = Field(
        default_factory=dict, description="design-space parameters (n_blocks, input_nc, choices, ...)")
    entries: dict[str, float] = Field(description="block key -> p50 ms")
    scale: float = Field(default=1.0, gt=0, description="whole network ≈ intercept + scale * sum of its blocks")
    intercept_ms: float = Field(default=0.0, ge=0, description="per-network cost no block pays (input/output, run call)")
    calibration: list[dict[str, float | str]] = Field(default_factory=list,
                                                      description="networks measured whole to fit `scale`")

    def entry(self, key: str) -> float:
        """The entry for `key`; a clear error naming the tag when the table lacks it."""
        try:
            return self.entries[key]
        except KeyError:
            raise InvalidInput(f"op table for hardware tag {self.hardware_tag!r} has no entry {key!r} "
                               f"(measured for another design space; run `pocketgan profile-ops` with this space)") from None


def optable_key(registry: "Registry", hardware_tag: str) -> str:
    """Object key of the table for `hardware_tag` under the registry prefix."""
    validate_name(hardware_tag, "hardware tag")
    root = f"{registry.prefix}/" if registry.prefix else ""
    return f"{root}optables/{hardware_tag}.json"


def put_optable(registry: "Registry", table: OpTable) -> str:
    """Store (or replace: re-profiling a device supersedes its old table) and return the key."""
    key = optable_key(registry, table.hardware_tag)
    registry.store.put(key, table.model_dump_json(indent=1).encode())
    return key


def get_optable(registry: "Registry", hardware_tag: str) -> OpTable:
    """The table for `hardware_tag`; NotFound (exit 4) with the command that makes one when absent."""
    key = optable_key(registry, hardware_tag)
    try:
        info = registry.store.head(key)
    except NotFound:
        raise NotFound(f"no op latency table for hardware tag {hardware_tag!r} in {registry.url(key)}; "
                       f"measure one on that device with `pocketgan profile-ops --hardware-tag {hardware_tag}`") from None
    if info.size > MAX_OPTABLE_BYTES:
        raise InvalidInput(f"op table {key} is {info.size} bytes, over the {MAX_OPTABLE_BYTES}-byte limit")
    body, _ = registry.store.get(key)
    return parse_optable(body, key, hardware_tag)


def parse_optable(body: bytes, source: str, hardware_tag: str | None = None) -> OpTable:
    """A table from JSON bytes (a registry object or a `profile-ops --out` file named `source`),
    checked for size, schema and, when given, its hardware tag; InvalidInput otherwise."""
    if len(body) > MAX_OPTABLE_BYTES:
        raise InvalidInput(f"op table {source} is {len(body)} bytes, over the {MAX_OPTABLE_BYTES}-byte limit")
    try:
        table = OpTable.model_validate(json.loads(body))
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0][:200]
        raise InvalidInput(f"op table {source} is not a valid table: {first}") from None
    if table.schema_version != OPTABLE_SCHEMA:
        raise InvalidInput(f"op table {source} has schema {table.schema_version}; this code reads {OPTABLE_SCHEMA}")
    if hardware_tag is not None and table.hardware_tag != hardware_tag:
        raise InvalidInput(f"op table {source} is for hardware tag {table.hardware_tag!r}, not {hardware_tag!r}")
    return table


def list_optables(registry: "Registry") -> list[str]:
    """Hardware tags that have a table."""
    prefix = optable_key(registry, "x")[: -len("x.json")]
    return sorted(k[len(prefix):-len(".json")] for k in registry.store.list(prefix) if k.endswith(".json"))
