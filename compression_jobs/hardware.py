"""Hardware tags for latency profiles.

Detection lives in :mod:`registry.runtime` (so the service, which may not import
compression_jobs, tags itself the same way); this module adds the override rule used by
``pocketgan profile --hardware-tag``.
"""

from __future__ import annotations

from registry.names import validate_name
from registry.runtime import cuda_compute_capability, cuda_usable, detect_hardware_tag

__all__ = ["cuda_compute_capability", "cuda_usable", "detect_hardware_tag", "resolve_hardware_tag"]


def resolve_hardware_tag(override: str | None = None, provider: str | None = None) -> str:
    """`override` if given (validated: a phone farm or Jetson reports its own tag), else detected."""
    if override:
        return validate_name(override, "hardware tag")
    return validate_name(detect_hardware_tag(provider), "hardware tag")
