"""registry/runtime.py: the shared ONNX Runtime wrapper and image pre/post-processing (no torch needed)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from registry.errors import ExecutionProviderUnavailable, InvalidInput, NotFound
from registry.runtime import OnnxGenerator, detect_hardware_tag, image_to_tensor, target_size, tensor_to_image, to_rgb
from registry.names import validate_name


def test_generator_session_basics(tiny_onnx):
    gen = OnnxGenerator(tiny_onnx, providers=["CPUExecutionProvider"], intra_op_threads=1)
    assert gen.providers == ["CPUExecutionProvider"] and gen.input_name == "input"
    assert (gen.input_nc, gen.output_nc) == (3, 3)
    assert gen.size_multiple == 4  # no metadata, no manifest: probed (3x3 convs run at 4x4)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 12, 20)).astype(np.float32)
    y = gen.run(x)
    assert y.shape == (1, 3, 12, 20) and np.abs(y).max() <= 1
    gen.warm_up(8, 8, runs=1)


def test_generator_rejects_bad_inputs(tiny_onnx, tmp_path):
    gen = OnnxGenerator(tiny_onnx, providers=["CPUExecutionProvider"], size_multiple=8)
    assert gen.size_multiple == 8  # explicit value wins
    with pytest.raises(InvalidInput, match="multiples of 8"):
        gen.run(np.zeros((1, 3, 12, 16), np.float32))
    with pytest.raises(InvalidInput, match="float32"):
        gen.run(np.zeros((1, 3, 16, 16), np.float64))
    with pytest.raises(InvalidInput, match="channels"):
        gen.run(np.zeros((1, 4, 16, 16), np.float32))
    with pytest.raises(NotFound):
        OnnxGenerator(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InvalidInput, match="cannot be loaded"):
        OnnxGenerator(tmp_path / "junk.onnx")
    with pytest.raises(ExecutionProviderUnavailable, match="not available"):
        OnnxGenerator(tiny_onnx, providers=["NoSuchExecutionProvider"])


def test_size_multiple_from_manifest_family(tiny_onnx):
    (tiny_onnx.parent / "manifest.json").write_text('{"architecture": {"family": "mobile-resnet"}}')
    assert OnnxGenerator(tiny_onnx, providers=["CPUExecutionProvider"]).size_multiple == 4


def test_target_size_policy():
    assert target_size(512, 256, 4) == (512, 256)
    assert target_size(301, 199, 4) == (300, 200)  # nearest multiple
    assert target_size(3, 2, 4) == (4, 4)  # at least one multiple
    assert target_size(1000, 500, 256) == (1024, 512)
    assert target_size(2000, 1000, 4, max_side=512) == (512, 256)
    with pytest.raises(InvalidInput):
        target_size(0, 10, 4)


def test_image_roundtrip_scaling_and_size():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    x, size = image_to_tensor(img, size_multiple=4)
    assert x.shape == (1, 3, 32, 44) and x.dtype == np.float32 and size == (45, 30)
    assert -1.0 <= x.min() and x.max() <= 1.0
    exact, _ = image_to_tensor(Image.fromarray(pixels[:28, :44]), size_multiple=4)
    back = tensor_to_image(exact, size=(44, 28))
    assert np.array_equal(np.asarray(back), pixels[:28, :44])  # lossless when no resize is needed
    assert tensor_to_image(x, size=size).size == (45, 30)
    clipped = tensor_to_image(np.full((1, 3, 4, 4), 7.0, np.float32))
    assert np.asarray(clipped).min() == 255
    assert tensor_to_image(np.zeros((1, 1, 4, 4), np.float32)).mode == "L"


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "1", "P", "CMYK", "I;16", "I", "F"])
def test_to_rgb_handles_modes(mode):
    base = Image.new("RGB", (8, 6), (200, 100, 50))
    if mode == "RGBA":
        img = Image.new("RGBA", (8, 6), (0, 0, 0, 0))  # fully transparent -> white
        assert np.asarray(to_rgb(img)).min() == 255
        return
    if mode == "LA":
        img = Image.new("LA", (8, 6), (0, 255))
        assert np.asarray(to_rgb(img)).max() == 0
        return
    if mode == "I;16":
        img = Image.fromarray(np.full((6, 8), 65535, np.uint16))
        assert np.asarray(to_rgb(img)).min() == 255  # full 16-bit scale maps to white, not clipped garbage
        return
    if mode == "I":
        img = Image.fromarray(np.full((6, 8), 32896, np.int32))
        assert np.asarray(to_rgb(img))[0, 0, 0] == 128
        return
    if mode == "F":
        img = Image.fromarray(np.full((6, 8), 0.5, np.float32))
        assert np.asarray(to_rgb(img))[0, 0, 0] == 128
        return
    rgb = to_rgb(base.convert(mode))
    assert rgb.mode == "RGB" and rgb.size == (8, 6)


def test_transparent_palette_is_composited():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0] * 256)
    img.info["transparency"] = 0
    assert np.asarray(to_rgb(img)).min() == 255


def test_hardware_tag_is_a_valid_name():
    tag = detect_hardware_tag("CPUExecutionProvider")
    validate_name(tag, "hardware tag")
    assert re.fullmatch(r"cpu-(x86_64(-avx512|-avx2)?|arm64|[a-z0-9._-]+)", tag)


def test_cuda_usable_is_a_real_session_and_cuda_is_refused_where_it_is_not(tiny_onnx):
    """cuda_usable() runs a one-op session on the CUDA EP; asking for CUDA where that fails raises
    instead of silently running on the CPU (onnxruntime-gpu would fall back with exit 0)."""
    import onnxruntime as ort

    from registry.runtime import CUDA, cuda_usable, default_providers

    usable = cuda_usable()
    assert default_providers()[0] == (CUDA if usable else "CPUExecutionProvider")
    if CUDA in ort.get_available_providers():  # onnxruntime-gpu: what ORT itself does with CUDA asked for
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        ort.set_default_logger_severity(4)
        try:
            got = ort.InferenceSession(str(tiny_onnx), sess_options=opts, providers=[CUDA]).get_providers()[0]
        finally:
            ort.set_default_logger_severity(2)
        assert (got == CUDA) == usable
    if usable:
        assert OnnxGenerator(tiny_onnx, providers=[CUDA]).provider == CUDA
        assert detect_hardware_tag(CUDA).startswith("cuda")
    else:
        with pytest.raises(ExecutionProviderUnavailable, match="not usable here|not available"):
            OnnxGenerator(tiny_onnx, providers=[CUDA])
        assert detect_hardware_tag().startswith("cpu-")
