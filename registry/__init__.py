"""The pocketgan model registry: manifest contract, S3 object store, operations, verified cache.

`service/` and `compression_jobs/` both depend on this package and never on each other.
"""

from registry.errors import (
    BucketNotFound,
    ConfigurationError,
    Conflict,
    CredentialsError,
    ExecutionProviderUnavailable,
    IntegrityError,
    InvalidInput,
    MissingObject,
    NotFound,
    RegistryError,
    RegistryUnreachable,
)
from registry.manifest import (
    Architecture,
    FileEntry,
    HardwareProfile,
    LatencyMeasurement,
    Manifest,
    Quality,
)
from registry.names import validate_name

__all__ = [
    "Architecture",
    "BucketNotFound",
    "ConfigurationError",
    "Conflict",
    "CredentialsError",
    "ExecutionProviderUnavailable",
    "FileEntry",
    "HardwareProfile",
    "IntegrityError",
    "InvalidInput",
    "LatencyMeasurement",
    "Manifest",
    "MissingObject",
    "NotFound",
    "Quality",
    "RegistryError",
    "RegistryUnreachable",
    "validate_name",
]
