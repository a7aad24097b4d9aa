"""Service settings: pydantic-settings from `POCKETGAN_SERVICE_*` env variables (or a YAML file).

`POCKETGAN_SERVICE_CONFIG=/path/service.yaml` loads a YAML file first; env variables override it.
Lists and dicts in env variables are JSON, e.g.
`POCKETGAN_SERVICE_TASKS='["facades-label2photo"]'`, `POCKETGAN_SERVICE_DEVICE_CLASSES='{"desktop": 80}'`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from registry.errors import InvalidInput
from registry.names import validate_name as _validate_name

def validate_name(value: str, kind: str) -> str:
    """registry's name check as a ValueError, so pydantic reports it as a validation error."""
    try:
        return _validate_name(value, kind)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None


DEFAULT_DEVICE_CLASSES: dict[str, float] = {"phone-low": 400.0, "phone-high": 150.0, "desktop": 80.0}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MiB = 1024 * 1024


def container_memory_limit() -> int | None:
    """The cgroup (v2, then v1) memory limit of this container in bytes; None when there is none."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # v1 reports "no limit" as a huge number
            return int(raw)
    return None


def usable_cores() -> int:
    """Cores this process may use: the cgroup (v2) CPU quota when one is set, else the CPU affinity."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def malloc_tunables_in_effect() -> str | None:
    """This process's GLIBC_TUNABLES: glibc's own setting, not ours (read here, where the service reads its
    environment); the worker checks it against the host (service.cli.huge_page_malloc_warning)."""
    return os.environ.get("GLIBC_TUNABLES")


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class ServiceSettings(BaseSettings):
    """Everything the service needs besides the registry location (that is `RegistrySettings`)."""

    model_config = SettingsConfigDict(env_prefix="POCKETGAN_SERVICE_", extra="ignore")

    tasks: list[str] = Field(default_factory=lambda: ["facades-label2photo"], min_length=1)
    channel: str = "production"
    hardware_tag: str | None = Field(default=None, description="tag whose profiles apply here; None = detect")
    device_classes: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_DEVICE_CLASSES),
        description="device class -> default latency budget in ms",
    )
    default_device_class: str | None = Field(
        default=None, description="device class of a request that names none; None = the first of device_classes",
    )
    min_budget_ms: float = Field(default=1.0, gt=0)
    max_budget_ms: float = Field(default=60000.0, gt=0)
    poll_interval_s: float = Field(default=10.0, gt=0)
    retry_interval_s: float = Field(default=5.0, gt=0, description="start-up retry when nothing is loaded")
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=4096 * 4096, ge=64)
    max_side: int | None = Field(default=None, ge=16, description="shrink larger inputs before inference")
    ewma_alpha: float = Field(default=0.2, gt=0, le=1)
    min_observations: int = Field(default=5, ge=1, description="observations before they correct profiles")
    # the thread rule (README "Service performance"): workers x inference_threads x intra_op_threads = cores
    intra_op_threads: int | None = Field(default=1, ge=1, description="ONNX Runtime threads per run (None: ORT's default, all host cores)")
    inference_threads: int | None = Field(
        default=None, ge=1, description="concurrent decode/infer/encode jobs per worker; None = usable cores / workers"
    )
    large_pixels: int = Field(
        default=512 * 512, ge=1,
        description="images above this many pixels run in the large lane, so they cannot take every inference thread",
    )
    large_inference_threads: int = Field(default=1, ge=1, description="concurrent jobs of the large lane per worker")
    warmup_size: int = Field(default=64, ge=8)
    resolve_cache_s: float = Field(default=30.0, ge=0)
    presign_expires_s: int = Field(default=900, ge=60, le=7 * 24 * 3600)
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    # -- admission (README "Limits"): per worker, bytes = pixels x (artifact's bytes/pixel + service_bytes_per_pixel)
    memory_budget_bytes: int | None = Field(
        default=None, ge=16 * MiB,
        description="bytes one worker may spend on in-flight requests; None = (container limit, else half the "
        "machine's memory) / workers - memory_reserve_bytes",
    )
    memory_reserve_bytes: int = Field(
        default=512 * MiB, ge=0, description="per worker: interpreter, BentoML, loaded sessions (not for requests)"
    )
    default_bytes_per_pixel: float = Field(
        default=2048.0, gt=0, description="ORT cost of an artifact whose profile has no peak_bytes_per_pixel"
    )
    service_bytes_per_pixel: float = Field(
        default=96.0, ge=0, description="decode, tensors, postprocess and encode outside ONNX Runtime"
    )
    # -- serving (read when BentoML starts serving, not when the bento is built)
    workers: int = Field(default=1, ge=1, le=64, description="worker processes")
    max_concurrency: int = Field(default=64, ge=1, description="requests being processed at once, split over workers (else 429)")
    timeout_s: float = Field(default=30.0, gt=0, description="from the complete body to the response start (else 504)")
    body_timeout_s: float = Field(default=10.0, gt=0, description="the whole body must arrive within this (else 408)")
    max_uploads: int = Field(default=256, ge=1, description="bodies being received at once per worker (else 503)")
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After on 429/503")
    access_log: bool = Field(
        default=True, description="BentoML's access log: one line per request (README \"Service performance\")",
    )
    tracing: bool = Field(
        default=False,
        description="OpenTelemetry spans for /translate and /resolve (BentoML's tracing middleware); off: those "
        "routes skip it, so set this when BentoML's tracing exporter is configured",
    )
    # -- access control (README "Security model")
    api_key_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="sha256 hex digests of the accepted API keys (JSON list or comma separated); empty = no keys",
    )
    internal_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs allowed to read /metrics, /models and the API docs (directly, not via a proxy); empty = all",
    )

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _split_hashes(cls, v: Any) -> Any:
        return _split_list(v)

    @field_validator("internal_networks", mode="before")
    @classmethod
    def _split_networks(cls, v: Any) -> Any:
        return _split_list(v)

    @field_validator("api_key_hashes")
    @classmethod
    def _hashes(cls, v: list[str]) -> list[str]:
        out = [h.strip().lower() for h in v if h.strip()]
        bad = [h[:8] + "..." for h in out if not _SHA256.match(h)]
        if bad:
            raise ValueError(f"api_key_hashes must be sha256 hex digests (64 hex chars); bad: {bad}")
        return out

    @field_validator("internal_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        out = [n.strip() for n in v if n.strip()]
        for n in out:
            ipaddress.ip_network(n, strict=False)  # ValueError -> validation error
        return out

    def worker_memory_budget(self, workers: int) -> int:
        """Bytes one worker admits for in-flight requests (see memory_budget_bytes)."""
        if self.memory_budget_bytes is not None:
            return self.memory_budget_bytes
        total = container_memory_limit() or physical_memory() // 2
        return max(16 * MiB, total // max(1, workers) - self.memory_reserve_bytes)

    # --- serving trust (issue 11): latency correction, re-probing, circuit breaker, policy ---
    ratio_min_pixels: int = Field(default=64 * 64, ge=0, description="smaller inference tensors do not update the latency ratio")
    ratio_clamp: float = Field(default=4.0, ge=1.0, description="ratio samples and p95 clamped to [1/clamp, clamp]")
    ratio_half_life_s: float = Field(default=60.0, gt=0, description="an unobserved artifact's ratio halves its distance to 1 this often")
    reprobe_every: int = Field(default=20, ge=1, description="re-probe an artifact excluded by its own ratio every N such requests")
    breaker_failures: int = Field(default=3, ge=1, description="run-time failures in a row that eject an artifact")
    breaker_cooldown_s: float = Field(default=30.0, gt=0, description="how long an ejected artifact sits out")
    device_class_policies: dict[str, str] = Field(
        default_factory=dict, description="device class -> selection policy (smallest | best-quality); default smallest",
    )

    @model_validator(mode="after")
    def _policies(self) -> "ServiceSettings":
        from service.selection import POLICIES

        for dc, policy in self.device_class_policies.items():
            if dc not in self.device_classes:
                raise ValueError(f"device_class_policies: unknown device class {dc!r}; known: {', '.join(self.device_classes)}")
            if policy not in POLICIES:
                raise ValueError(f"device_class_policies[{dc!r}]: unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        return self

    def policy_for(self, device_class: str) -> str:
        return self.device_class_policies.get(device_class, "smallest")

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        return [validate_name(t, "task") for t in v]

    @field_validator("channel")
    @classmethod
    def _channel(cls, v: str) -> str:
        return validate_name(v, "channel")

    @field_validator("device_classes")
    @classmethod
    def _classes(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("at least one device class is needed")
        for name, budget in v.items():
            validate_name(name, "device class")
            if budget <= 0:
                raise ValueError(f"device class {name!r}: budget must be > 0 ms")
        return v

    def device_class_or_default(self, name: str | None) -> str:
        """The request's device class, or the configured default (the first class when none is set) when
        the field is absent; an empty one is kept (and refused: the schema says so)."""
        return name if name is not None else self.default_device_class or next(iter(self.device_classes))

    @model_validator(mode="after")
    def _bounds(self) -> "ServiceSettings":
        if self.inference_threads is None:
            self.inference_threads = max(1, usable_cores() // self.workers)
        if self.default_device_class is not None and self.default_device_class not in self.device_classes:
            raise ValueError(f"default_device_class {self.default_device_class!r} is not one of device_classes")
        if self.min_budget_ms >= self.max_budget_ms:
            raise ValueError("min_budget_ms must be < max_budget_ms")
        for name, budget in self.device_classes.items():
            if not self.min_budget_ms <= budget <= self.max_budget_ms:
                raise ValueError(f"device class {name!r}: default budget {budget} ms outside the budget bounds")
        return self

    def resolved_hardware_tag(self) -> str:
        """The configured tag, or the one `registry.runtime` detects for this machine's default provider."""
        if self.hardware_tag:
            return validate_name(self.hardware_tag, "hardware tag")
        from registry.runtime import detect_hardware_tag

        return detect_hardware_tag()

    def budget_buckets_s(self) -> list[float]:
        """Histogram bucket bounds (seconds): the device-class budgets plus a generic ladder."""
        ladder = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        return sorted({round(b / 1000.0, 6) for b in self.device_classes.values()} | set(ladder))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, *_yaml_source(settings_cls))


def _split_list(v: Any) -> Any:
    """A JSON list or a comma-separated string (handy in a k8s Secret) -> list."""
    if isinstance(v, str):
        text = v.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [p for p in text.split(",") if p.strip()]
    return v


def _yaml_source(settings_cls: type[BaseSettings]) -> tuple[PydanticBaseSettingsSource, ...]:
    """Lowest-priority source: pydantic-settings' YAML source for the file named by
    POCKETGAN_SERVICE_CONFIG, if set. A named file that is missing, malformed or not a mapping is an
    error (pydantic-settings alone would skip a missing file silently)."""
    path = os.environ.get("POCKETGAN_SERVICE_CONFIG")
    if not path:
        return ()
    if not Path(path).is_file():
        raise ValueError(f"POCKETGAN_SERVICE_CONFIG={path}: no such file")
    try:
        return (YamlConfigSettingsSource(settings_cls, yaml_file=path),)
    except (TypeError, ValueError, yaml.YAMLError) as exc:  # a list or scalar document, or not YAML at all
        raise ValueError(f"{path}: service config must be a YAML mapping ({type(exc).__name__})") from None
