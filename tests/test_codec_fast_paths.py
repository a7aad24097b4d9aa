"""The fast decode / convert / encode paths give the same pixels as the plain ones (or within a stated tolerance).

- `image_to_tensor` / `tensor_to_image`: bit-identical to the straightforward numpy versions below
  (the code before the fast paths), for every dtype, NaN/inf, 1 and 3 channels, odd sizes.
- JPEG draft decoding (a JPEG >= 2x the service's `max_side`): the tensor the model sees differs from
  the full decode + bicubic resize by at most 2 grey levels on average (stated tolerance; DCT scaling
  is a different low-pass filter), the response keeps the upload's size, EXIF rotation included.
- WebP method 0: same size, decodes to pixels within JPEG-like error of the input.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from registry.runtime import image_to_tensor, is_upright_rgb, tensor_to_image, to_rgb
from service.images import WEBP_METHOD, decode_image, encode_image


def _reference_to_tensor(img: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    rgb = to_rgb(img)
    if size is not None and size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    arr = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None])


def _reference_to_pixels(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)[0]
    pixels = ((np.clip(np.nan_to_num(a.astype(np.float32)), -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)
    return pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)


def _photo(w: int, h: int) -> Image.Image:
    """Smooth content with edges (a natural-ish image: gradients + blocks + mild noise), deterministic."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
    g = np.where((xx // 64 + yy // 48) % 2 == 0, 200.0, 60.0)
    b = 255 * xx / w
    arr = np.stack([r, g, b], -1) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("channels,h,w", [(3, 13, 21), (1, 8, 5), (3, 64, 64)])
def test_tensor_to_image_is_bit_identical(dtype, channels: int, h: int, w: int) -> None:
    rng = np.random.default_rng(channels * 100 + h)
    a = rng.normal(0, 0.8, (1, channels, h, w)).astype(dtype)
    a[0, 0, 0, 0] = np.nan
    a[0, -1, -1, -1] = np.inf
    a[0, 0, h // 2, w // 2] = -np.inf
    a[0, 0, 1, 1] = 0.0  # (0 + 1) * 127.5 = 127.5: a rounding tie, to even (128) in both
    out = tensor_to_image(a)
    assert np.array_equal(np.asarray(out), _reference_to_pixels(a))
    assert out.mode == ("L" if channels == 1 else "RGB") and out.size == (w, h)
    assert np.asarray(out)[0, 0].ravel()[0] == 128  # NaN -> mid-grey
    assert np.array_equal(np.asarray(tensor_to_image(a[0], size=(w + 3, h + 1))),
                          np.asarray(Image.fromarray(_reference_to_pixels(a)).resize((w + 3, h + 1), Image.Resampling.BICUBIC)))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_image_to_tensor_is_bit_identical(mode: str) -> None:
    img = _photo(45, 30).convert(mode)
    x, size = image_to_tensor(img, size_multiple=4)
    assert size == (45, 30) and x.flags.c_contiguous and x.dtype == np.float32
    assert np.array_equal(x, _reference_to_tensor(img, (44, 32)))
    exact, _ = image_to_tensor(img.convert("RGB").crop((0, 0, 44, 28)), size_multiple=4)
    assert np.array_equal(exact, _reference_to_tensor(img.convert("RGB").crop((0, 0, 44, 28))))


def test_exif_rotated_images_still_turn_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    data = _jpeg(_photo(40, 24), exif=exif)
    opened = Image.open(io.BytesIO(data))
    assert not is_upright_rgb(opened)
    x, size = image_to_tensor(opened, size_multiple=4)
    assert size == (24, 40) and x.shape == (1, 3, 40, 24)
    decoded = decode_image(data, max_pixels=10_000)
    assert decoded.image.size == decoded.output_size == (24, 40) and is_upright_rgb(decoded.image)
    assert np.array_equal(image_to_tensor(decoded.image, size_multiple=4)[0], x)


def test_jpeg_draft_decode_within_tolerance_and_keeps_the_upload_size() -> None:
    big = _photo(1200, 900)
    data = _jpeg(big)
    full = decode_image(data, max_pixels=1 << 24)
    drafted = decode_image(data, max_pixels=1 << 24, max_side=256)
    assert full.image.size == full.output_size == (1200, 900)
    assert drafted.output_size == (1200, 900)
    assert 256 <= max(drafted.image.size) < 1200  # DCT-scaled (1/4 here), never below max_side
    assert drafted.image.size == (300, 225)
    xf, _ = image_to_tensor(full.image, size_multiple=4, max_side=256)
    xd, _ = image_to_tensor(drafted.image, size_multiple=4, max_side=256)
    assert xf.shape == xd.shape == (1, 3, 192, 256)
    mean_levels = float(np.abs(xf - xd).mean()) * 127.5
    assert mean_levels <= 2.0, mean_levels  # stated tolerance: mean |diff| <= 2 of 255 grey levels
    # the response goes back to the upload's size, as without draft
    assert tensor_to_image(xd, size=drafted.output_size).size == (1200, 900)


def test_jpeg_draft_with_exif_rotation_and_where_it_does_not_apply() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 270 degrees
    data = _jpeg(_photo(1024, 600), exif=exif)
    d = decode_image(data, max_pixels=1 << 24, max_side=200)
    assert d.output_size == (600, 1024) and d.image.size == (150, 256)
    small = _jpeg(_photo(300, 200))  # < 2x max_side: decoded in full
    assert decode_image(small, max_pixels=1 << 24, max_side=200).image.size == (300, 200)
    buf = io.BytesIO()
    _photo(1024, 600).save(buf, format="PNG")  # PNG has no DCT scaling: full decode
    assert decode_image(buf.getvalue(), max_pixels=1 << 24, max_side=200).image.size == (1024, 600)
    # a JPEG that is huge in one side only: never drafted below max_side on the long side
    strip = decode_image(_jpeg(_photo(2048, 64)), max_pixels=1 << 24, max_side=256)
    assert max(strip.image.size) >= 256 and strip.output_size == (2048, 64)


def test_webp_fast_method_round_trips() -> None:
    assert WEBP_METHOD == 0
    img = _photo(96, 64)
    body, ctype = encode_image(img, "webp", jpeg_quality=90)
    assert ctype == "image/webp"
    back = decode_image(body, max_pixels=10_000)
    assert back.image.size == (96, 64)
    err = np.abs(np.asarray(back.image, np.int16) - np.asarray(img, np.int16)).mean()
    assert err <= 6.0, err  # lossy at quality 90, same as the default method (the effort setting changes size, not quality)
