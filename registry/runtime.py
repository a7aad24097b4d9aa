"""The one ONNX Runtime wrapper for generators, shared by the latency profiler and the service.

Free of torch on purpose: the service image only needs onnxruntime, numpy and Pillow.

Tensor convention: NCHW float32 in [-1, 1] (the pix2pix/CycleGAN ``Normalize(0.5, 0.5)``).
Height and width must be divisible by the model's ``size_multiple`` (4 for ResNet-style
generators with two stride-2 downsamplings, ``2**num_downs`` for U-Nets). The exporter records
it in the ONNX metadata (``pocketgan.size_multiple``); without it we fall back to the
manifest's family, then to probing.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

from registry.errors import ExecutionProviderUnavailable, InvalidInput, NotFound

META_SIZE_MULTIPLE = "pocketgan.size_multiple"
META_FAMILY = "pocketgan.family"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
FAMILY_SIZE_MULTIPLE = {"resnet": 4, "mobile-resnet": 4, "supernet": 4}
CUDA_UNUSABLE = (
    "CUDAExecutionProvider was asked for but is not usable here (a one-op test session could not run on it: no GPU, "
    "or the CUDA 13 / cuDNN 9 libraries are missing: pip install 'pocketgan[gpu]'); use CPUExecutionProvider"
)


@functools.lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """True only if a real one-op test session runs on the CUDA EP here (once per process).

    onnxruntime-gpu lists CUDAExecutionProvider on any machine, and without a GPU or without the
    CUDA 13 / cuDNN 9 libraries (the `gpu` extra) creating a session only logs an error and falls
    back to the CPU. So: build a session for a tiny Add graph with only the CUDA EP, and require
    that the session kept CUDA and that the op ran. ORT's own failure log is silenced for the probe.
    """
    if CUDA not in ort.get_available_providers():
        return False
    if importlib.util.find_spec("nvidia") is not None and hasattr(ort, "preload_dlls"):
        # the nvidia-* wheels of the `gpu` extra: load their libraries so no LD_LIBRARY_PATH is needed
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
        except Exception:  # noqa: BLE001 - the session below decides
            pass
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(_probe_model(), sess_options=opts, providers=[CUDA])
        if session.get_providers()[0] != CUDA:
            return False
        x = np.array([1.5], np.float32)
        return bool(session.run(None, {"x": x})[0][0] == 3.0)
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False
    finally:
        ort.set_default_logger_severity(2)  # ORT's default (warnings)


def _probe_model() -> bytes:
    """A serialized ONNX graph y = x + x on a float[1] (built with the onnx package, no file)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "cuda_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def default_providers() -> list[str]:
    return [CUDA, CPU] if cuda_usable() else [CPU]


class OnnxGenerator:
    """An ONNX image-to-image generator: session setup, shape checks, warm-up and a single `run`."""

    def __init__(
        self,
        model_path: Path | str,
        *,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        size_multiple: int | None = None,
        min_side: int | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise NotFound(f"ONNX model not found: {self.model_path}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = inter_op_threads
        if intra_op_threads is not None:
            opts.intra_op_num_threads = intra_op_threads
        opts.log_severity_level = 3
        # No CPU memory arena: the arena keeps its high-water mark for the life of the session (one
        # 4096x4096 request pinned GBs until the next model swap). Measured on the ngf=64 ResNet teacher
        # (1 thread, 2 shared cores): same latency as the arena within noise (128x128 p50 240-380 ms vs
        # 247-483 ms), a lower peak (~960 vs ~1440 bytes/pixel at 1024x1024) and RSS back to baseline
        # after the run; arena + `memory.enable_memory_arena_shrinkage` also returns memory but keeps
        # the higher peak. See README "Limits".
        opts.enable_cpu_mem_arena = False
        self.intra_op_threads = intra_op_threads
        requested = providers if providers is not None else default_providers()
        unknown = [p for p in requested if p not in ort.get_available_providers()]
        if unknown:
            raise ExecutionProviderUnavailable(
                f"execution provider(s) {unknown} not available in this onnxruntime; have {ort.get_available_providers()}")
        if requested and requested[0] == CUDA and not cuda_usable():
            raise ExecutionProviderUnavailable(CUDA_UNUSABLE)
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=opts, providers=requested)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise InvalidInput(f"{self.model_path}: cannot be loaded by onnxruntime: {str(exc).splitlines()[0]}") from exc
        self.providers: list[str] = list(self.session.get_providers())
        if requested and self.providers[0] != requested[0]:  # ORT fell back silently: never measure/serve on it
            raise ExecutionProviderUnavailable(
                f"{self.model_path}: asked for {requested[0]}, onnxruntime gave {self.providers[0]}; nothing runs on a "
                "provider that was not asked for")
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        self.input_name: str = inp.name
        self.output_name: str = out.name
        self.input_nc: int = _static(inp.shape, 1, default=3)
        self.output_nc: int = _static(out.shape, 1, default=3)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.size_multiple: int = size_multiple or self._size_multiple_from_metadata() or self._probe_size_multiple()
        self.min_side: int = max(self.size_multiple, min_side or 0)
        """smallest side the model runs at (registry.contract measures it); smaller inputs are upscaled"""

    @property
    def provider(self) -> str:
        """The execution provider that actually runs the graph (first in the session's list)."""
        return self.providers[0]

    def _size_multiple_from_metadata(self) -> int | None:
        if META_SIZE_MULTIPLE in self.metadata:
            return int(self.metadata[META_SIZE_MULTIPLE])
        manifest = self.model_path.with_name("manifest.json")
        if manifest.is_file():
            try:
                family = json.loads(manifest.read_text()).get("architecture", {}).get("family")
            except ValueError:
                family = None
            if family in FAMILY_SIZE_MULTIPLE:
                return FAMILY_SIZE_MULTIPLE[family]
        return None

    def _probe_size_multiple(self) -> int:
        """Smallest power-of-two side (>= 4) that runs and keeps its size: a safe, maybe conservative, multiple."""
        for side in (4, 8, 16, 32, 64, 128, 256, 512):
            try:
                y = self.run(np.zeros((1, self.input_nc, side, side), np.float32), _check=False)
            except Exception:  # noqa: BLE001 - too small for this network
                continue
            if y.shape[-2:] == (side, side):
                return side
        raise InvalidInput(f"{self.model_path}: could not find an input size the model accepts (tried up to 512)")

    def run(self, batch: np.ndarray, *, _check: bool = True) -> np.ndarray:
        """Translate an NCHW float32 batch in [-1, 1]; returns NCHW float32 in [-1, 1]."""
        if _check:
            self.check_input(batch)
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def check_input(self, batch: np.ndarray) -> None:
        if not isinstance(batch, np.ndarray) or batch.ndim != 4:
            raise InvalidInput(f"expected an NCHW array, got {getattr(batch, 'shape', type(batch))}")
        if batch.dtype != np.float32:
            raise InvalidInput(f"expected float32 input, got {batch.dtype}")
        _, c, h, w = batch.shape
        if c != self.input_nc:
            raise InvalidInput(f"model takes {self.input_nc} channels, got {c}")
        m = self.size_multiple
        if h % m or w % m or h == 0 or w == 0:
            raise InvalidInput(f"height and width must be positive multiples of {m}, got {h}x{w}")

    def warm_up(self, height: int, width: int, batch: int = 1, runs: int = 2) -> None:
        """Run a few times so allocations and kernel selection are done before real traffic."""
        x = np.zeros((batch, self.input_nc, height, width), np.float32)
        for _ in range(max(1, runs)):
            self.run(x)

    def translate(self, img: Image.Image, *, max_side: int | None = None) -> Image.Image:
        """PIL in, PIL out (same size as the input), using the helpers below."""
        x, size = self.prepare(img, max_side=max_side)
        return tensor_to_image(self.run(x), size=size)

    def prepare(self, img: Image.Image, *, max_side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """:func:`image_to_tensor` with this model's size multiple and minimum side."""
        return image_to_tensor(img, size_multiple=self.size_multiple, max_side=max_side, min_side=self.min_side)


def _static(shape: Sequence[object], axis: int, default: int) -> int:
    dim = shape[axis] if len(shape) > axis else None
    return dim if isinstance(dim, int) and dim > 0 else default


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB.

    - EXIF orientation is applied first (phone photos come out upright); malformed EXIF is ignored.
    - Transparency (RGBA, LA, PA, P with a transparency key) is composited onto white.
    - L / 1 / P / CMYK / YCbCr / HSV / LAB: Pillow's own conversion to RGB.
    - 16/32-bit integer (I;16*, I) and float (F) greyscale: scaled to 0..255 (I;16 by 1/257,
      I by 1/257 when its values fit in 16 bits else by its own maximum, F in [0, 1] by 255
      else clipped to 0..255), then replicated to RGB.
    """
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - a malformed EXIF block: the orientation is unknown, the pixels are fine
        pass
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            scaled = arr * 255.0 if arr.size and np.nanmax(arr) <= 1.0 else arr
        elif mode.startswith("I;16") or (arr.size and arr.max() <= 65535):
            scaled = arr / 257.0
        else:
            scaled = arr / max(float(arr.max()), 1.0) * 255.0
        grey = np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def target_size(
    width: int, height: int, size_multiple: int, max_side: int | None = None, min_side: int | None = None
) -> tuple[int, int]:
    """Resize policy: optionally shrink so the longer side <= max_side (keeping aspect ratio), then
    round each side to the nearest multiple of `size_multiple`, at least `min_side` (rounded up to a
    multiple; default one multiple): a 2x2 upload must not reach a network whose pads need 8x8."""
    if width <= 0 or height <= 0:
        raise InvalidInput(f"empty image ({width}x{height})")
    w, h = float(width), float(height)
    if max_side is not None and max(w, h) > max_side:
        scale = max_side / max(w, h)
        w, h = w * scale, h * scale
    m = size_multiple
    floor = max(m, -(-(min_side or 0) // m) * m)
    return max(floor, int(round(w / m)) * m), max(floor, int(round(h / m)) * m)


def image_to_tensor(
    img: Image.Image, *, size_multiple: int, max_side: int | None = None, min_side: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """PIL image -> (1x3xHxW float32 in [-1, 1], original (width, height) after EXIF orientation).

    The image is converted with :func:`to_rgb` and resized (bicubic) to :func:`target_size`, so
    H and W are multiples of the model's `size_multiple`; :func:`tensor_to_image` resizes back.
    An RGB image that is already upright (what `service.images.decode_image` returns) is used as
    is: no copy. One pass writes the planar float tensor straight from the HWC bytes (float32
    maths, bit-identical to ``asarray(float32) / 127.5 - 1`` then a transposed copy).
    """
    rgb = img if is_upright_rgb(img) else to_rgb(img)
    original = rgb.size
    size = target_size(*original, size_multiple=size_multiple, max_side=max_side, min_side=min_side)
    if size != original:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    hwc = np.asarray(rgb)
    out = np.empty((1, 3, hwc.shape[0], hwc.shape[1]), np.float32)
    np.divide(hwc.transpose(2, 0, 1), np.float32(127.5), out=out[0], dtype=np.float32)
    np.subtract(out, np.float32(1.0), out=out)
    return out, original


def is_upright_rgb(img: Image.Image) -> bool:
    """RGB with no EXIF rotation to apply: :func:`to_rgb` would only copy it."""
    if img.mode != "RGB":
        return False
    if "exif" not in img.info and not getattr(img, "_exif", None):
        return True
    try:
        return img.getexif().get(0x0112, 1) == 1  # Orientation
    except Exception:  # noqa: BLE001 - malformed EXIF: to_rgb ignores it too
        return True


def tensor_to_image(arr: np.ndarray, size: tuple[int, int] | None = None) -> Image.Image:
    """(1x)CxHxW in [-1, 1] -> PIL (RGB for 3 channels, L for 1), clipped, resized (bicubic) to `size`=(W, H).

    NaN -> 0 (mid-grey), +-inf -> the clip bounds. In place on one float32 buffer, planes merged by
    Pillow instead of a strided numpy transpose: same pixels as clip -> +1 -> x127.5 -> round, ~4x
    less time at 256x256 (see README "Service overhead").
    """
    a = np.asarray(arr)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise InvalidInput(f"tensor_to_image takes one image, got a batch of {a.shape[0]}")
        a = a[0]
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise InvalidInput(f"expected a 1x3xHxW or 1x1xHxW array, got shape {np.asarray(arr).shape}")
    buf = np.clip(a, -1.0, 1.0, out=np.empty(a.shape, np.float32), dtype=np.float32)
    nan = np.isnan(buf)
    if nan.any():
        buf[nan] = 0.0
    buf += np.float32(1.0)
    buf *= np.float32(127.5)
    np.rint(buf, out=buf)
    planes = buf.astype(np.uint8)
    h, w = planes.shape[1:]
    bands = [Image.frombuffer("L", (w, h), planes[c], "raw", "L", 0, 1) for c in range(planes.shape[0])]
    img = bands[0].copy() if len(bands) == 1 else Image.merge("RGB", bands)
    if size is not None and tuple(size) != img.size:
        img = img.resize(tuple(size), Image.Resampling.BICUBIC)
    return img


# --- hardware tags (here, not in compression_jobs, so the service can tag itself too) ---

def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cuda_compute_capability() -> str | None:
    """e.g. '90' for an H100, from nvidia-smi (torch-free); None when it cannot be asked."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].strip().replace(".", "") if out and out[0].strip() else None


def detect_hardware_tag(provider: str | None = None) -> str:
    """The registry tag for where inference runs here.

    CUDA EP (requested, or chosen by default because it really works): ``cuda-sm<cc>`` (``cuda``
    when the compute capability cannot be read). CPU: ``cpu-x86_64-avx512`` (avx512f flag),
    ``cpu-x86_64-avx2``, ``cpu-x86_64``, ``cpu-arm64`` (aarch64/arm64), else ``cpu-<machine>``.
    Devices that cannot be detected (a phone farm, a Jetson) pass their own tag instead.
    """
    import platform
    import re as _re

    use_cuda = provider == CUDA or (provider is None and cuda_usable())
    if use_cuda:
        cc = cuda_compute_capability()
        return f"cuda-sm{cc}" if cc else "cuda"
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        flags = _cpu_flags()
        if "avx512f" in flags:
            return "cpu-x86_64-avx512"
        if "avx2" in flags:
            return "cpu-x86_64-avx2"
        return "cpu-x86_64"
    if machine in ("aarch64", "arm64"):
        return "cpu-arm64"
    return "cpu-" + (_re.sub(r"[^a-z0-9._-]", "-", machine) or "unknown")
