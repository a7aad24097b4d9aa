"""Registry configuration: the boto3 way (env, profiles) plus two pocketgan variables.

- `POCKETGAN_REGISTRY=s3://bucket/prefix` — where the registry lives (required to talk to S3).
- `POCKETGAN_S3_ENDPOINT=http://127.0.0.1:8333` — a non-AWS S3 (SeaweedFS, MinIO); unset = AWS.

Credentials are resolved by boto3 (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, config
files, instance roles). Timeouts and attempts are small on purpose: when S3 is down a command
fails within seconds (exit 6) instead of hanging.
"""

from __future__ import annotations

import getpass
import re
import socket
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry.errors import ConfigurationError, InvalidInput
from registry.names import validate_name

BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
SETUP_HINT = (
    "start a local S3 with `pocketgan s3 up` and export the variables it prints, "
    "or set POCKETGAN_REGISTRY=s3://bucket/prefix (plus POCKETGAN_S3_ENDPOINT for non-AWS S3)"
)


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def parse_registry_url(url: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b"); every prefix segment must be a safe name."""
    if not url.startswith("s3://"):
        raise ConfigurationError(f"POCKETGAN_REGISTRY must look like s3://bucket/prefix, got {url!r}")
    rest = url[len("s3://") :].strip("/")
    bucket, _, prefix = rest.partition("/")
    if not BUCKET_PATTERN.fullmatch(bucket) or ".." in bucket:
        raise ConfigurationError(f"invalid bucket name {bucket!r} in POCKETGAN_REGISTRY={url!r} (3-63 chars a-z 0-9 . -)")
    parts = [p for p in prefix.split("/") if p] if prefix else []
    if prefix and len(parts) != len(prefix.split("/")):
        raise ConfigurationError(f"empty path segment in registry prefix {prefix!r}")
    for part in parts:
        try:
            validate_name(part, "registry prefix segment")
        except InvalidInput as exc:
            raise ConfigurationError(f"POCKETGAN_REGISTRY={url!r}: {exc}") from None
    return bucket, "/".join(parts)


class RegistrySettings(BaseSettings):
    """Where the registry is and how hard to try reaching it. Reads POCKETGAN_* variables."""

    model_config = SettingsConfigDict(env_prefix="POCKETGAN_", extra="ignore", populate_by_name=True)

    registry: str | None = Field(default=None, description="s3://bucket/prefix (POCKETGAN_REGISTRY)")
    s3_endpoint: str | None = Field(default=None, description="custom S3 endpoint URL; unset = AWS")
    s3_public_endpoint: str | None = Field(
        default=None,
        description="endpoint that presigned URLs name (what phones can reach); unset = s3_endpoint",
    )
    region: str = Field(
        default="us-east-1",
        validation_alias=AliasChoices("POCKETGAN_REGION", "AWS_REGION", "AWS_DEFAULT_REGION", "region"),
        description="first set of POCKETGAN_REGION, AWS_REGION, AWS_DEFAULT_REGION",
    )
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "pocketgan")
    connect_timeout_s: float = Field(default=2.0, gt=0)
    read_timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, description="botocore standard retry mode, total attempts")
    actor: str = Field(default_factory=_default_actor, description="who promotes/rolls back (audit log)")
    # Explicit credentials are for tests and embedding; normally None so boto3 resolves them.
    access_key_id: str | None = Field(default=None, exclude=True)
    secret_access_key: SecretStr | None = Field(default=None, exclude=True)
    multipart_threshold_mb: int = Field(default=64, ge=5)

    @field_validator("registry")
    @classmethod
    def _valid_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        parse_registry_url(v)
        return v

    @field_validator("s3_endpoint", "s3_public_endpoint")
    @classmethod
    def _valid_endpoint(cls, v: str | None) -> str | None:
        if not v:
            return None
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"POCKETGAN_S3_ENDPOINT / POCKETGAN_S3_PUBLIC_ENDPOINT must be an http(s) URL, got {v!r}")
        return v.rstrip("/")

    @field_validator("cache_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(v).expanduser()

    def location(self) -> tuple[str, str]:
        """(bucket, prefix); ConfigurationError (exit 8) with set-up instructions when POCKETGAN_REGISTRY is unset."""
        if not self.registry:
            raise ConfigurationError(f"POCKETGAN_REGISTRY is not set: {SETUP_HINT}")
        return parse_registry_url(self.registry)

    @property
    def bucket(self) -> str:
        return self.location()[0]

    @property
    def prefix(self) -> str:
        return self.location()[1]

    @property
    def endpoint_label(self) -> str:
        """How error messages name the endpoint."""
        return self.s3_endpoint or f"AWS S3 ({self.region})"

    @classmethod
    def from_env(cls) -> "RegistrySettings":
        """Settings from the environment, with a one-line ConfigurationError instead of a pydantic report."""
        try:
            return cls()
        except ConfigurationError:
            raise
        except ValueError as exc:
            errors = getattr(exc, "errors", None)
            first = errors()[0] if callable(errors) else None
            msg = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else str(exc).splitlines()[0]
            raise ConfigurationError(f"invalid registry configuration: {msg}") from exc


class LocalS3Settings(BaseSettings):
    """`pocketgan s3` defaults: where the local SeaweedFS keeps its data (XDG base directories)."""

    model_config = SettingsConfigDict(extra="ignore")

    xdg_data_home: Path = Field(default_factory=lambda: Path.home() / ".local" / "share",
                                validation_alias="XDG_DATA_HOME")

    @field_validator("xdg_data_home", mode="before")
    @classmethod
    def _unset_if_empty(cls, v: object) -> object:
        return Path.home() / ".local" / "share" if v in ("", None) else v

    @property
    def data_dir(self) -> Path:
        return Path(self.xdg_data_home).expanduser() / "pocketgan" / "s3"
