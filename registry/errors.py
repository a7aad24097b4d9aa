"""Registry errors. Each carries the CLI exit code it maps to, so every front end agrees."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class: a one-line, user-facing message plus an exit code."""

    exit_code: int = 1


class InvalidInput(RegistryError):
    """Bad usage, an invalid name, or a manifest that does not validate."""

    exit_code = 2


class Conflict(RegistryError):
    """A compare-and-swap lost a race, or the operation contradicts the current state."""

    exit_code = 3

    def __init__(self, message: str, current_revision: int | None = None) -> None:
        super().__init__(message)
        self.current_revision = current_revision


class NotFound(RegistryError):
    """The artifact, alias, bucket or file does not exist (catch a subclass to tell which)."""

    exit_code = 4


class MissingObject(NotFound):
    """One key (manifest, alias, file) is absent from a bucket that exists: often an expected answer."""


class BucketNotFound(NotFound):
    """The bucket itself is missing: never to be read as "object absent", so not a `MissingObject`."""


class IntegrityError(RegistryError):
    """A file's bytes do not match the sha256 recorded in its manifest, or a stored registry object
    (manifest, profile, alias, audit event) no longer parses."""

    exit_code = 5


class RegistryUnreachable(RegistryError):
    """The object store did not answer (down, wrong endpoint, network)."""

    exit_code = 6


class ContractViolation(RegistryError):
    """The model is not a generator the service can run (registry.contract): refused at publish,
    promote and load."""

    exit_code = 7


class ConfigurationError(RegistryError):
    """Configuration the operator must fix before anything can run: POCKETGAN_REGISTRY unset or
    malformed, no AWS credentials, credentials the store rejects."""

    exit_code = 8


class CredentialsError(ConfigurationError, RegistryUnreachable):
    """No AWS credentials, or the store rejects them (InvalidAccessKeyId, SignatureDoesNotMatch,
    AccessDenied, 403). Exit 8 like any configuration error; still a RegistryUnreachable for the
    service, which keeps serving its verified cache while it cannot read the registry."""


class ExecutionProviderUnavailable(RegistryError):
    """An ONNX Runtime execution provider was asked for (e.g. CUDAExecutionProvider) and this
    machine cannot run it: nothing is measured or served on another provider in its place."""

    exit_code = 9
