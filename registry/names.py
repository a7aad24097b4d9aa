"""Names that end up inside S3 keys (task, channel, hardware tag, artifact id).

One strict pattern keeps keys free of path tricks: no '/', no '..', no upper case, at most 64 chars.
"""

from __future__ import annotations

import re

from registry.errors import InvalidInput

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def validate_name(value: str, kind: str = "name") -> str:
    """Return `value` unchanged if it is a safe key component, else raise InvalidInput."""
    if not isinstance(value, str):
        raise InvalidInput(f"invalid {kind}: expected a string, got {type(value).__name__}")
    if NAME_PATTERN.fullmatch(value) is None or ".." in value:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise InvalidInput(
            f"invalid {kind} {shown!r}: use 1-64 characters from a-z 0-9 . _ -, "
            "starting with a letter or digit (no '/', no '..', no upper case)"
        )
    return value
