"""Request/response models of the service's HTTP surface (also what /docs.json describes)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ModelFormat = Literal["onnx", "ort", "onnx-fp16"]
RESOLVE_FORMATS: tuple[str, ...] = ("onnx", "ort", "onnx-fp16")


class ErrorBody(BaseModel):
    """Every 4xx/5xx of the service, whatever produced it: one line, machine-readable reason, request id.
    429 and 503 also carry a Retry-After header (seconds)."""

    error: str = Field(description="one-line human-readable message (never exception text)")
    reason: str = Field(description="stable machine-readable code, e.g. body_too_large, unknown_task, busy")
    request_id: str = Field(description="the X-Request-Id of the request (also a response header and in the logs)")


class ResolveRequest(BaseModel):
    """`POST /resolve`: which artifact should a client with this hardware download?"""

    model_config = ConfigDict(extra="forbid")

    task: str
    hardware_tag: str
    latency_budget_ms: float
    height: int = Field(default=256, ge=1, le=16384)
    width: int = Field(default=256, ge=1, le=16384)
    format: ModelFormat = Field(
        default="onnx", description="what the client runs: onnx, ort (ONNX Runtime Mobile) or onnx-fp16; "
        "only artifacts published with that variant are candidates",
    )


class ArtifactSummary(BaseModel):
    artifact_id: str
    task: str
    method: str
    family: str
    channel_config: str | None = None
    macs: int | None = None
    params: int | None = None
    total_bytes: int
    precision: str
    model_sha256: str
    model_bytes: int
    profiled_tags: list[str]
    formats: list[str] = Field(default_factory=lambda: ["onnx"], description="formats /resolve can hand out")


class CandidateOut(BaseModel):
    artifact_id: str
    expected_ms: float | None
    eligible: bool
    reason: str


class ResolveResponse(BaseModel):
    task: str
    hardware_tag: str
    latency_budget_ms: float
    artifact: ArtifactSummary
    format: ModelFormat = Field(description="the format of the file at `url` (the one asked for)")
    path: str = Field(description="the file's path in the artifact, e.g. model.onnx or model.ort")
    url: str = Field(description="presigned GET for that file")
    url_expires_s: int
    sha256: str = Field(description="sha256 of that file: verify after download")
    bytes: int = Field(description="size of that file")
    written_by: str | None = Field(
        default=None, description="for a variant: the ONNX Runtime version that wrote it (an .ort file needs a runtime at least as new)",
    )
    expected_ms: float | None
    budget_met: bool
    no_eligible: bool
    reasons: list[str]
    candidates: list[CandidateOut]


class ObservedOut(BaseModel):
    count: int
    ewma_ratio: float | None = Field(description="EWMA of inference ms / profile p95 at that size (decayed toward 1 while unobserved)")
    p95_ratio: float | None = Field(description="estimated p95 of that ratio (used to correct expectations)")


class LoadedArtifactOut(BaseModel):
    summary: ArtifactSummary
    profiles: dict[str, list[dict]] = Field(description="hardware tag -> measurements")
    observed: ObservedOut
    providers: list[str]
    min_side: int = Field(default=1, description="smallest side the model runs at; smaller uploads are sized up")
    ejected_for_s: float = Field(default=0.0, description="seconds left in a circuit-breaker cool-down (0 = selectable)")


class TaskModelsOut(BaseModel):
    task: str
    channel: str
    promoted: list[str] = Field(description="artifact ids in the alias as last read")
    promoted_revision: int | None
    loaded: list[LoadedArtifactOut]
    loaded_revision: int | None
    source: Literal["registry", "cache", "none"]
    loaded_at: str | None
    last_successful_poll_s_ago: float | None
    last_error: str | None = Field(description="what failed last and its error class (details are in the log)")


class ModelsResponse(BaseModel):
    hardware_tag: str
    worker_pid: int
    device_classes: dict[str, float]
    tasks: list[TaskModelsOut]
