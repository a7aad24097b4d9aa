"""The manifest: the one contract between compression jobs, the registry and the service.

One JSON document per artifact version, written after the model bytes. Hardware profiles
measured later live next to it (`profiles/<tag>.json`) and are merged in when read, so the
manifest object itself never changes after publication.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from registry.errors import InvalidInput
from registry.names import validate_name

SCHEMA_VERSION = 1
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
ARTIFACT_ID_LENGTH = 16
"""An artifact id is the first 16 hex digits of model.onnx's sha256 (64 bits: collisions are
not a practical concern for a registry, and ids stay readable in tables and logs)."""

Precision = Literal["fp32", "fp16", "int8"]


def _task(v: str) -> str:
    return validate_name(v, "task")


def _tag(v: str) -> str:
    return validate_name(v, "hardware tag")


def _artifact_id(v: str) -> str:
    validate_name(v, "artifact id")
    if not re.fullmatch(rf"[0-9a-f]{{{ARTIFACT_ID_LENGTH}}}", v):
        raise ValueError(f"artifact id must be {ARTIFACT_ID_LENGTH} lowercase hex digits, got {v!r}")
    return v


TaskName = Annotated[str, AfterValidator(_task)]
HardwareTag = Annotated[str, AfterValidator(_tag)]
ArtifactId = Annotated[str, AfterValidator(_artifact_id)]


def artifact_id_from_sha256(sha256_hex: str) -> str:
    """The artifact id for a model.onnx whose full sha256 is `sha256_hex`."""
    return sha256_hex[:ARTIFACT_ID_LENGTH]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class FileEntry(_Model):
    """One file of the artifact, relative to the artifact's folder."""

    path: str
    sha256: str
    bytes: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _relative_path(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not v or p.is_absolute() or ".." in p.parts or "\\" in v or v.startswith("."):
            raise ValueError(f"file path must be relative and inside the artifact, got {v!r}")
        for part in p.parts:
            validate_name(part.lower(), "file path component")
            if part != part.lower():
                raise ValueError(f"file path must be lower case, got {v!r}")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not SHA256_PATTERN.fullmatch(v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v


class Architecture(_Model):
    """What the network is and what it costs. MACs are counted at `reference_resolution`."""

    family: str = Field(description="e.g. resnet, unet, mobile-resnet")
    channel_config: str | None = Field(
        default=None, description="per-layer channel widths, e.g. '16_16_32_16_32_32_16_16'"
    )
    input_nc: int = Field(default=3, ge=1)
    output_nc: int = Field(default=3, ge=1)
    ngf: int | None = None
    n_blocks: int | None = None
    macs: int | None = Field(default=None, ge=0, description="multiply-accumulates per image")
    reference_resolution: int = Field(default=256, ge=1, description="square side MACs refer to")
    params: int | None = Field(default=None, ge=0)
    file_bytes: int | None = Field(default=None, ge=0)
    onnx_opset: int | None = None
    precision: Precision = "fp32"
    macs_convention: str = Field(
        default="conv/convtranspose/linear weights only; norms, activations and padding not counted",
    )


class Baseline(_Model):
    """A trivial generator's fidelity on the same held-out images, for judging a student's figures."""

    name: str = Field(description="identity (input returned), mean-image (mean training image), teacher")
    psnr_to_teacher: float | None = None
    ssim_to_teacher: float | None = None
    psnr_to_ground_truth: float | None = None
    ssim_to_ground_truth: float | None = None


class Quality(_Model):
    """Fidelity on held-out real images. Missing metrics are None and `notes` says why."""

    dataset: str | None = None
    split: str | None = None
    n_images: int | None = Field(default=None, ge=0)
    resolution: int | None = None
    psnr_to_teacher: float | None = None
    ssim_to_teacher: float | None = None
    psnr_to_ground_truth: float | None = None
    ssim_to_ground_truth: float | None = None
    psnr_to_fp32: float | None = Field(default=None, description="for quantized artifacts")
    lpips: float | None = None
    fid: float | None = None
    kid: float | None = None
    fid_to_teacher: float | None = Field(default=None, description="FID between this model's and the teacher's outputs")
    baselines: list[Baseline] = Field(default_factory=list, description="trivial baselines on the same images")
    below_baseline: bool | None = Field(default=None, description=(
        "True: SSIM to the teacher not above the best trivial baseline's (None: not judged, e.g. the teacher)"))
    notes: list[str] = Field(default_factory=list)


class LatencyMeasurement(_Model):
    """One (resolution, batch) point of a hardware profile."""

    height: int = Field(ge=1)
    width: int = Field(ge=1)
    batch: int = Field(default=1, ge=1)
    runs: int = Field(ge=1)
    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)
    mean_ms: float | None = Field(default=None, ge=0)
    throughput_ips: float = Field(ge=0, description="images per second")
    peak_memory_mb: float | None = Field(default=None, ge=0)
    peak_bytes_per_pixel: float | None = Field(
        default=None, ge=0,
        description="peak resident memory one run added over the resident set before it, per input pixel "
        "(batch x height x width): what the service's admission multiplies by a request's pixels",
    )

    @model_validator(mode="after")
    def _ordered(self) -> "LatencyMeasurement":
        if not (self.p50_ms <= self.p95_ms <= self.p99_ms):
            raise ValueError("percentiles must satisfy p50 <= p95 <= p99")
        return self


def nearest_measurement(measurements: list[LatencyMeasurement], height: int, width: int,
                        batch: int = 1) -> LatencyMeasurement:
    """The measurement whose pixel count is closest to height*width (same batch preferred)."""
    same_batch = [m for m in measurements if m.batch == batch] or measurements
    target = height * width
    return min(same_batch, key=lambda m: (abs(m.height * m.width - target), m.batch))


class HardwareProfile(_Model):
    """Latency of one artifact on one hardware tag, measured on that hardware."""

    hardware_tag: HardwareTag
    runtime: str = "onnxruntime"
    runtime_version: str
    execution_provider: str = "CPUExecutionProvider"
    threads: int | None = Field(default=None, ge=0)
    host: str | None = None
    measurements: list[LatencyMeasurement] = Field(min_length=1)
    measured_at: datetime = Field(default_factory=utcnow)

    def nearest(self, height: int, width: int, batch: int = 1) -> LatencyMeasurement:
        return nearest_measurement(self.measurements, height, width, batch)


# --- generator contract record (registry/contract.py fills it at publish) -------------------------

class ContractCheck(_Model):
    """That the model passed the generator contract, under which ONNX Runtime, and what the check
    learnt about it (the sizes it accepts). Written at publish; old manifests have none and are
    checked again at promote and load."""

    passed: bool
    runtime: str = "onnxruntime"
    runtime_version: str
    checked_at: datetime = Field(default_factory=utcnow)
    input_name: str
    output_name: str
    input_nc: int = Field(ge=1)
    output_nc: int = Field(ge=1)
    size_multiple: int = Field(ge=1, description="height and width must be multiples of this")
    min_side: int = Field(ge=1, description="smallest side (a multiple of size_multiple) the model runs at")
    output_range: tuple[float, float] = Field(default=(-1.0, 1.0), description="declared output range (tanh)")
    reference_output_min: float = Field(description="output minimum on the reference image at min_side")
    reference_output_max: float
    graph_macs: int | None = Field(default=None, ge=0, description="MACs counted from the graph at reference_resolution")


VariantFormat = Literal["ort", "onnx-fp16"]
VARIANT_FILES: dict[str, str] = {"ort": "model.ort", "onnx-fp16": "model.fp16.onnx"}


class Variant(_Model):
    """Another format of the same generator for on-device runtimes (`registry.artifact.add_variants`):
    ORT format (`.ort`, ONNX Runtime Mobile) or fp16 weights. Its file is in `files` (own sha256); the
    artifact id stays model.onnx's. Checked against model.onnx by `registry.contract.check_variant`."""

    format: VariantFormat
    path: str = Field(description="the file in `files`")
    runtime_version: str = Field(description="ONNX Runtime that wrote and checked it (ORT format: runtimes >= this read it)")
    max_abs_diff: float = Field(ge=0, description="largest |output - model.onnx output| on the contract's reference image")
    p50_ms: float | None = Field(default=None, ge=0, description="where measured: its p50 at the reference side here")
    onnx_p50_ms: float | None = Field(default=None, ge=0, description="model.onnx's p50, measured side by side")


class Manifest(_Model):
    """Everything downstream reads this. Built by compression jobs, validated at every boundary."""

    schema_version: int = SCHEMA_VERSION
    task: TaskName
    artifact_id: ArtifactId
    created_at: datetime = Field(default_factory=utcnow)
    parent: str | None = Field(default=None, description="teacher or supernet artifact id / name")
    method: str = Field(description="teacher, gan-compression, omgd, coevolution, int8, ...")
    job: dict[str, Any] = Field(default_factory=dict, description="job config that produced it")
    code_version: str | None = None
    architecture: Architecture
    files: list[FileEntry] = Field(min_length=1)
    quality: Quality = Field(default_factory=Quality)
    profiles: list[HardwareProfile] = Field(default_factory=list)
    model_file: str = Field(default="model.onnx", description="path of the ONNX graph in files")
    contract: ContractCheck | None = Field(default=None, description="generator contract check (registry.contract)")
    variants: list[Variant] = Field(default_factory=list, description="other formats of model.onnx (mobile runtimes)")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return validate_name(v, "method")

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("duplicate file paths in manifest")
        model = self.file(self.model_file)
        if model is None:
            raise ValueError(f"model file {self.model_file!r} is not listed in files")
        if artifact_id_from_sha256(model.sha256) != self.artifact_id:
            raise ValueError("artifact_id must be the first 16 hex digits of the model file's sha256")
        formats = [v.format for v in self.variants]
        if len(set(formats)) != len(formats):
            raise ValueError("at most one variant per format")
        for v in self.variants:
            if v.path == self.model_file or self.file(v.path) is None:
                raise ValueError(f"variant {v.format}: file {v.path!r} is not listed in files (or is the model file)")
        tags = [p.hardware_tag for p in self.profiles]
        if len(set(tags)) != len(tags):
            raise ValueError("at most one profile per hardware tag")
        return self

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def format_file(self, fmt: str) -> FileEntry | None:
        """The file a client running `fmt` downloads: model.onnx for "onnx", else the variant's; None if absent."""
        if fmt == "onnx":
            return self.file(self.model_file)
        v = next((v for v in self.variants if v.format == fmt), None)
        return self.file(v.path) if v else None

    @property
    def formats(self) -> list[str]:
        return ["onnx", *(v.format for v in self.variants)]

    def profile(self, hardware_tag: str) -> HardwareProfile | None:
        return next((p for p in self.profiles if p.hardware_tag == hardware_tag), None)

    def with_profile(self, profile: HardwareProfile) -> "Manifest":
        """A copy with `profile` replacing any earlier profile for the same tag."""
        others = [p for p in self.profiles if p.hardware_tag != profile.hardware_tag]
        return self.model_copy(update={"profiles": [*others, profile]})

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @classmethod
    def parse(cls, data: bytes | str, source: str = "manifest") -> "Manifest":
        """Validate JSON into a Manifest, turning pydantic's report into one InvalidInput line."""
        try:
            return cls.model_validate_json(data)
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise InvalidInput(f"{source} is not a valid manifest: {_first_error(exc)}") from exc


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            loc = ".".join(str(x) for x in first.get("loc", ())) or "(root)"
            return f"{loc}: {first.get('msg')}"
        except Exception:  # pragma: no cover - defensive
            pass
    return str(exc).splitlines()[0]
