"""Decoding untrusted image bytes: every failure is an `ImageRejected` with a status and reason.

Policy (on purpose):
- Accepted formats by content (magic bytes AND Pillow's detected format): PNG, JPEG, WEBP.
  File names and declared content types are ignored.
- The pixel count is checked from the header *before* decoding (decompression bombs -> 413);
  Pillow's own MAX_IMAGE_PIXELS guard (its default, as an error) is a second line.
- Truncated or corrupt data -> 400 `corrupt_image` (LOAD_TRUNCATED_IMAGES stays False).
- Animated images (APNG, animated WEBP) -> 415 `animated_image`: which frame to translate is
  ambiguous, so we refuse instead of guessing.
- Colour modes are converted, not refused: RGBA/LA/P-with-transparency are composited onto
  white, greyscale and CMYK go through Pillow's conversion, 16-bit greyscale is scaled to
  8 bits (`registry.runtime.to_rgb`), EXIF orientation is applied; a malformed EXIF block
  means the orientation tag is ignored (the pixels are fine), never an error.
- `probe_image` does every header check without decoding pixels, so the service can check the
  size against the models and its memory budget before it spends anything on decoding.

Cost (measured, README "Service overhead"): decoding is the codec and nothing more: an upright
RGB image is not copied again, and a JPEG much larger than the service's `max_side` is decoded at
1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (`draft`), never below the size the model runs at.
Encoding uses each codec's fast setting: PNG zlib level 1, WebP method 0 (`WEBP_METHOD`).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass

from PIL import Image

from registry.runtime import is_upright_rgb, to_rgb

_FORMATS = ("PNG", "JPEG", "WEBP")
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class ImageRejected(Exception):
    """Bad input: HTTP status, stable reason code and a one-line message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


REJECTION_REASONS = (
    "body_too_large", "wrong_content_type", "bad_form", "missing_image", "empty_image", "unsupported_format",
    "too_many_pixels", "corrupt_image", "animated_image", "bad_parameter", "unknown_task", "unknown_device_class",
    "budget_out_of_range", "busy", "no_servable_model",
)


def sniff_format(data: bytes) -> str | None:
    """PNG / JPEG / WEBP from the magic bytes, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # 8-bit RGB, upright; smaller than the upload when JPEG draft scaling applied
    format: str  # PNG / JPEG / WEBP
    original_mode: str
    size: tuple[int, int] | None = None  # (width, height) upright, as uploaded: the output size

    @property
    def output_size(self) -> tuple[int, int]:
        """The size the response image must have (the upload's, after EXIF orientation)."""
        return self.size or self.image.size


@dataclass(frozen=True)
class Probed:
    format: str  # PNG / JPEG / WEBP
    width: int  # as stored (EXIF orientation may swap the two; pixel count and smallest side do not change)
    height: int


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct.error, Image.UnidentifiedImageError)


def probe_image(data: bytes, *, max_pixels: int) -> Probed:
    """Header checks only (format, size, animation): cheap, no pixels decoded; or ImageRejected."""
    img, fmt = _open(data, max_pixels)
    return Probed(fmt, *img.size)


def _open(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    if not data:
        raise ImageRejected(400, "empty_image", "the image part is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected(415, "unsupported_format", "image content is not PNG, JPEG or WEBP")
    # Pillow's own bomb guard (process-global MAX_IMAGE_PIXELS, left at its default: setting it per request
    # would race between threads and leak into other code) is the second line; our check below is the first.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
            if img.format not in _FORMATS:
                raise ImageRejected(415, "unsupported_format", f"decoded format {img.format} is not accepted")
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageRejected(400, "corrupt_image", f"image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise ImageRejected(413, "too_many_pixels", f"image is {w}x{h} = {w * h} pixels, limit {max_pixels}")
            if getattr(img, "n_frames", 1) > 1:
                raise ImageRejected(415, "animated_image", "animated images are not accepted; send one frame")
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - see _rejected
        raise _rejected(exc) from exc
    return img, fmt


def _rejected(exc: Exception) -> ImageRejected:
    """Pillow's failures on hostile bytes as 4xx; anything else is a bug and propagates."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageRejected(413, "too_many_pixels", "decompression bomb refused")
    if isinstance(exc, _DECODE_ERRORS):
        msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        return ImageRejected(400, "corrupt_image", f"image cannot be decoded: {msg}")
    raise exc


def decode_image(data: bytes, *, max_pixels: int, max_side: int | None = None) -> Decoded:
    """Untrusted bytes -> RGB image, or ImageRejected. Blocking: call it off the event loop.

    `max_side`: the inference side limit; a JPEG at least twice as large is decoded at a reduced
    scale (draft) that stays >= max_side on its longer side, so the later bicubic resize to the
    model's size sees as many pixels as it keeps. `Decoded.size` keeps the upload's size.
    """
    img, fmt = _open(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            mode = img.mode
            full = img.size
            if max_side is not None and fmt == "JPEG" and max(full) >= 2 * max_side:
                scale = max_side / max(full)
                img.draft(None, (max(1, math.ceil(full[0] * scale)), max(1, math.ceil(full[1] * scale))))
            img.load()
            rgb = img if is_upright_rgb(img) else to_rgb(img)
            rgb.load()
    except Exception as exc:  # noqa: BLE001 - see _rejected
        raise _rejected(exc) from exc
    size = None
    if img.size != full:  # drafted: the output goes back to the upload's (upright) size
        size = (full[1], full[0]) if _swaps_sides(img) else full
    return Decoded(image=rgb, format=fmt, original_mode=mode, size=size)


def _swaps_sides(img: Image.Image) -> bool:
    """EXIF orientation 5..8 turns the image by 90 degrees (what `to_rgb` applies)."""
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - malformed EXIF: to_rgb ignores it too
        return False


WEBP_METHOD = 0
"""libwebp effort 0..6: 0 is ~3x faster than Pillow's default 4 at 256x256 for ~8 % more bytes (README)."""


def encode_image(img: Image.Image, fmt: str, *, jpeg_quality: int = 90) -> tuple[bytes, str]:
    """PIL -> (bytes, content type) for png / jpeg / webp."""
    fmt = fmt.lower()
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)  # speed over size: it is a response body
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=jpeg_quality)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=jpeg_quality, method=WEBP_METHOD)
    else:  # pragma: no cover - validated before
        raise ValueError(f"unknown output format {fmt!r}")
    return buf.getvalue(), _CONTENT_TYPES[fmt]
