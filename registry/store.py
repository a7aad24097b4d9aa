"""Object-store access: a small abstract interface and one thin boto3 backend.

The registry needs only a handful of operations, but two of them must be exact: conditional
writes (`If-None-Match: *` to create once, `If-Match: etag` for compare-and-swap) and
conditional reads (`If-None-Match: etag` -> 304, so polling an unchanged alias is cheap).
Every botocore failure becomes one registry error whose message names endpoint, bucket and key:

| S3 / botocore                                   | registry error        | exit |
|-------------------------------------------------|-----------------------|------|
| 404, NoSuchKey                                  | MissingObject         | 4    |
| NoSuchBucket                                    | BucketNotFound        | 4    |
| 412 PreconditionFailed                          | Conflict              | 3    |
| connection refused/timeout, 5xx after retries   | RegistryUnreachable   | 6    |
| InvalidAccessKeyId, SignatureDoesNotMatch, 403, no credentials | CredentialsError (configuration) | 8 |
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from registry.config import RegistrySettings
from registry.errors import (
    BucketNotFound, Conflict, CredentialsError, InvalidInput, MissingObject, RegistryError, RegistryUnreachable,
)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


class ObjectStore(abc.ABC):
    """What the registry needs from a bucket. Keys are full keys inside the bucket."""

    bucket: str
    endpoint_label: str

    @abc.abstractmethod
    def get(self, key: str) -> tuple[bytes, str]:
        """(body, etag); MissingObject if absent."""

    @abc.abstractmethod
    def get_if_changed(self, key: str, etag: str | None) -> tuple[bytes, str] | None:
        """Like get, but None when the object's ETag still equals `etag` (HTTP 304)."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size and ETag; MissingObject if absent."""

    @abc.abstractmethod
    def put(
        self, key: str, data: bytes | Path, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        """Write and return the new ETag. Conflict when a condition does not hold."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All keys under `prefix` (recursive), sorted."""

    @abc.abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Immediate 'sub-folder' names under `prefix` (which ends with '/')."""

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def download(self, key: str, dest: BinaryIO) -> tuple[int, str]:
        """Stream the object into `dest`; returns (bytes written, sha256 hex)."""

    @abc.abstractmethod
    def presign_get(self, key: str, expires_s: int = 900) -> str: ...

    @abc.abstractmethod
    def check_bucket(self) -> None:
        """Raise NotFound/RegistryUnreachable if the bucket is missing or S3 does not answer."""

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except MissingObject:
            return False
        return True

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"


class S3ObjectStore(ObjectStore):
    """boto3 backend: standard retries, small timeouts, path-style addressing for custom endpoints."""

    def __init__(self, settings: RegistrySettings, bucket: str | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.settings = settings
        self.bucket = bucket or settings.bucket
        self.endpoint_label = settings.endpoint_label
        config = Config(
            region_name=settings.region,
            retries={"mode": "standard", "max_attempts": settings.max_attempts},
            connect_timeout=settings.connect_timeout_s,
            read_timeout=settings.read_timeout_s,
            max_pool_connections=16,
            signature_version="s3v4",
            s3={"addressing_style": "path"} if settings.s3_endpoint else {},
        )
        secret = settings.secret_access_key
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret,
            region_name=settings.region,
        )
        self.client = session.client("s3", endpoint_url=settings.s3_endpoint, config=config)
        # presigned URLs are signed for the host they name: a second client (no network use) for the public endpoint
        public = settings.s3_public_endpoint
        self.presign_client = (
            session.client("s3", endpoint_url=public, config=config.merge(Config(s3={"addressing_style": "path"})))
            if public and public != settings.s3_endpoint else self.client
        )
        self.transfer = TransferConfig(multipart_threshold=settings.multipart_threshold_mb * 1024 * 1024)

    # ------------------------------------------------------------------ error mapping

    @contextlib.contextmanager
    def _errors(self, op: str, key: str | None = None) -> Iterator[None]:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError as BotoConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = f"s3://{self.bucket}/{key}" if key else f"bucket {self.bucket}"
        at = f"at {self.endpoint_label}"
        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                raise self._no_bucket() from exc
            if code in ("404", "NoSuchKey", "NotFound") or status == 404:
                # a bodiless 404 (HEAD) does not say whether the key or the bucket is missing
                if key is not None and code in ("404", "NotFound") and not self._bucket_exists_quiet():
                    raise self._no_bucket() from exc
                raise MissingObject(f"{op} {where}: not found {at}") from exc
            if code in ("PreconditionFailed", "412") or status == 412:
                raise Conflict(f"{op} {where}: precondition failed {at} (someone else changed it)") from exc
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken") or status == 403:
                raise CredentialsError(
                    f"{op} {where}: access denied {at} ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
                ) from exc
            if status is not None and status >= 500:
                raise RegistryUnreachable(f"{op} {where}: S3 error {status} {code} {at}") from exc
            raise RegistryError(f"{op} {where}: S3 error {code or status}: {err.get('Message', '')} {at}") from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise CredentialsError(
                f"{op} {where}: no AWS credentials ({exc}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            ) from exc
        except (BotoConnectionError, HTTPClientError) as exc:
            raise RegistryUnreachable(
                f"{op} {where}: S3 unreachable {at} after {self.settings.max_attempts} attempt(s): {type(exc).__name__}"
            ) from exc
        except BotoCoreError as exc:
            raise RegistryError(f"{op} {where}: {exc} {at}") from exc

    def _no_bucket(self) -> BucketNotFound:
        hint = f"`pocketgan s3 up --bucket {self.bucket}`" if self.settings.s3_endpoint else f"`aws s3 mb s3://{self.bucket}`"
        return BucketNotFound(f"bucket {self.bucket} does not exist at {self.endpoint_label}; create it with {hint}")

    def _bucket_exists_quiet(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001 - only a clear 404 means "no bucket"
            resp = getattr(exc, "response", {}) or {}
            status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return status != 404
        return True

    # ------------------------------------------------------------------ operations

    def get(self, key: str) -> tuple[bytes, str]:
        with self._errors("get", key):
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
            return resp["Body"].read(), resp["ETag"]

    def get_if_changed(self, key: str, etag: str | None) -> tuple[bytes, str] | None:
        if etag is None:
            return self.get(key)
        from botocore.exceptions import ClientError

        with self._errors("get", key):
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=key, IfNoneMatch=etag)
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 304:
                    return None
                raise
            return resp["Body"].read(), resp["ETag"]

    def head(self, key: str) -> ObjectInfo:
        with self._errors("head", key):
            resp = self.client.head_object(Bucket=self.bucket, Key=key)
            return ObjectInfo(key=key, size=int(resp["ContentLength"]), etag=resp["ETag"])

    def put(
        self, key: str, data: bytes | Path, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        if if_none_match and if_match:
            raise InvalidInput("put: use either if_none_match or if_match, not both")
        conditions: dict[str, str] = {}
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        if if_match:
            conditions["IfMatch"] = if_match
        with self._errors("put", key):
            if isinstance(data, (bytes, bytearray)):
                return self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(data), **conditions)["ETag"]
            path = Path(data)
            if conditions or path.stat().st_size < self.transfer.multipart_threshold:
                # conditional writes must be one PutObject request
                with open(path, "rb") as fh:
                    return self.client.put_object(Bucket=self.bucket, Key=key, Body=fh, **conditions)["ETag"]
            self.client.upload_file(str(path), self.bucket, key, Config=self.transfer)
            return self.client.head_object(Bucket=self.bucket, Key=key)["ETag"]

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with self._errors("list", prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)

    def list_dirs(self, prefix: str) -> list[str]:
        names: list[str] = []
        with self._errors("list", prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for cp in page.get("CommonPrefixes", []):
                    names.append(cp["Prefix"][len(prefix) :].rstrip("/"))
        return sorted(n for n in names if n)

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def download(self, key: str, dest: BinaryIO) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        with self._errors("get", key):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            for block in body.iter_chunks(_CHUNK):
                digest.update(block)
                dest.write(block)
                size += len(block)
        dest.flush()
        return size, digest.hexdigest()

    def presign_get(self, key: str, expires_s: int = 900) -> str:
        with self._errors("presign", key):
            return self.presign_client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=int(expires_s)
            )

    def check_bucket(self) -> None:
        with self._errors("head-bucket"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except Exception as exc:
                resp = getattr(exc, "response", {}) or {}
                if resp.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    raise self._no_bucket() from exc
                raise
