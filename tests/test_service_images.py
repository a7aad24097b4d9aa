"""Decoding untrusted bytes (service/images.py): the policy, case by case, in-process."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.images import ImageRejected, decode_image, encode_image, sniff_format


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h but carries almost no data: the size check must fire before decoding."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_round_trip(fmt: str) -> None:
    d = decode_image(_save(RGB, fmt), max_pixels=10_000)
    assert d.format == fmt and d.image.mode == "RGB" and d.image.size == (30, 20)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_refused_by_content(fmt: str) -> None:
    with pytest.raises(ImageRejected) as e:
        decode_image(_save(RGB, fmt), max_pixels=10_000)
    assert e.value.status == 415 and e.value.reason == "unsupported_format"


def test_header_bomb_refused_before_decoding() -> None:
    with pytest.raises(ImageRejected) as e:
        decode_image(_png_header_only(50_000, 50_000), max_pixels=4096 * 4096)
    assert (e.value.status, e.value.reason) == (413, "too_many_pixels")


def test_truncated_and_garbage() -> None:
    data = _save(RGB, "PNG")
    for bad in (data[:-30], data[:40], b"\xff\xd8\xff" + b"\0" * 50, b"RIFF\0\0\0\0WEBPVP8 junk"):
        with pytest.raises(ImageRejected) as e:
            decode_image(bad, max_pixels=10_000)
        assert e.value.status == 400 and e.value.reason == "corrupt_image", bad[:12]


def test_animated_refused() -> None:
    frames = [RGB, RGB.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    for fmt in ("PNG", "WEBP"):
        data = _save(frames[0], fmt, save_all=True, append_images=frames[1:])
        with pytest.raises(ImageRejected) as e:
            decode_image(data, max_pixels=10_000)
        assert e.value.reason == "animated_image"


def test_modes_converted_on_purpose() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black -> white
    assert decode_image(_save(rgba, "PNG"), max_pixels=100).image.getpixel((0, 0)) == (255, 255, 255)
    g16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert decode_image(_save(g16, "PNG"), max_pixels=100).image.getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    assert decode_image(_save(cmyk, "JPEG"), max_pixels=100).image.mode == "RGB"


def test_sniff_and_encode() -> None:
    assert sniff_format(b"GIF89a") is None and sniff_format(b"") is None
    for fmt in ("png", "jpeg", "webp"):
        body, ctype = encode_image(RGB, fmt)
        assert sniff_format(body) == fmt.upper() and ctype == f"image/{fmt}"


def _jpeg_with_app1(payload: bytes) -> bytes:
    import struct

    j = _save(Image.new("RGB", (20, 10), (200, 10, 10)), "JPEG")
    return j[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + j[2:]


@pytest.mark.parametrize("payload", [
    b"Exif\x00\x00garbage!",
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12",
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x02\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
    b"\x87\x69\x00\x04\x00\x00\x00\x01\x00\x00\x13\x88\x00\x00\x00\x00",
])
def test_malformed_exif_never_raises_anything_but_a_rejection(payload: bytes) -> None:
    from service.images import probe_image

    data = _jpeg_with_app1(payload)
    try:
        d = decode_image(data, max_pixels=10_000)
    except ImageRejected as r:
        assert r.status == 400 and r.reason == "corrupt_image"
    else:
        assert d.image.mode == "RGB" and sorted(d.image.size) == [10, 20]
    assert probe_image(data, max_pixels=10_000).width == 20
