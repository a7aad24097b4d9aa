"""Start a real `bentoml serve` of the pocketgan service on a real registry (shared by service tests).

Test data: tiny real ONNX conv generators with *synthetic* latency profiles written through
`Registry.add_profile`, so selection is deterministic (these numbers are test inputs, not
measurement claims). `start_service` publishes them, starts the server with nothing promoted,
records `/readyz` then, promotes the initial set and waits until every worker has loaded it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
from PIL import Image

from conftest import build_tiny_onnx
from service.launcher import ServiceProcess, free_port, stop_process_group  # noqa: F401 - re-exported for tests

TASK = "facades-label2photo"
TAG = "test-cpu"
REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0


def build_reflect_onnx(path: Path, seed: int = 0, width: int = 4) -> Path:
    """A tiny encoder-decoder with reflect pads like the real generators: Pad(reflect 1) -> Conv 3x3 ->
    Conv 3x3 stride 2 -> Pad(reflect 1) -> Conv 3x3 -> ConvTranspose 4x4 stride 2 -> Tanh.

    Size multiple 2 (in the ONNX metadata); the second reflect pad needs >= 2 px at half size, so
    the smallest side it runs on is 4 (a 2x2 input fails inside ONNX Runtime, as the real ones do below 8).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def t(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    inits = [pads, t("w1", width, 3, 3, 3), t("w2", width, width, 3, 3), t("w3", width, width, 3, 3),
             t("w4", width, 3, 4, 4)]
    nodes = [
        helper.make_node("Pad", ["input", "pads"], ["p1"], mode="reflect"),
        helper.make_node("Conv", ["p1", "w1"], ["h1"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["h2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("Pad", ["r2", "pads"], ["p2"], mode="reflect"),
        helper.make_node("Conv", ["p2", "w3"], ["h3"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["h3"], ["r3"]),
        helper.make_node("ConvTranspose", ["r3", "w4"], ["h4"], kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["h4"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "reflect_generator",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "height", "width"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pocketgan-tests")
    model.ir_version = 8
    helper.set_model_props(model, {"pocketgan.size_multiple": "2"})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_artifact(root: Path, width: int, seed: int, p95_ms: float | None, *, reflect: bool = False,
                  memory_at: int | None = None, measured=None, variants: tuple[str, ...] = ()):  # noqa: ANN001
    """A real tiny generator as an artifact dir (+ its synthetic profile for TAG, or None).

    `reflect`: the reflect-pad model (build_reflect_onnx) instead of the plain convs. `memory_at`: add a
    real measurement (compression_jobs.profiling.measure) at that square side, for its peak bytes/pixel;
    `measured`: such a measurement taken earlier, appended as is. `variants`: formats to add ("ort").
    """
    import onnxruntime as ort

    from registry.artifact import build_manifest, write_manifest
    from registry.manifest import Architecture, HardwareProfile, LatencyMeasurement

    d = root / f"{'r' if reflect else 'w'}{width}-s{seed}"
    (build_reflect_onnx if reflect else build_tiny_onnx)(d / "model.onnx", seed=seed, width=width)
    macs = (width * 3 * 9 + 3 * width * 9) * 256 * 256
    arch = Architecture(family="tiny-conv", channel_config=str(width), macs=macs, reference_resolution=256)
    manifest = build_manifest(d, task=TASK, method="teacher", architecture=arch)
    write_manifest(d, manifest)
    if variants:  # mobile formats next to model.onnx (registry.artifact.add_variants)
        from registry.artifact import add_variants

        manifest, _ = add_variants(d, variants)
    profile = None
    if p95_ms is not None:
        profile = HardwareProfile(
            hardware_tag=TAG, runtime_version=ort.__version__,
            measurements=[
                LatencyMeasurement(height=64, width=64, runs=20, p50_ms=p95_ms * 0.8, p95_ms=p95_ms, p99_ms=p95_ms * 1.1,
                                   throughput_ips=1000.0 / p95_ms)
            ],
        )
        if memory_at is not None:
            from compression_jobs.profiling import measure
            from registry.runtime import OnnxGenerator

            gen = OnnxGenerator(d / "model.onnx", intra_op_threads=1)
            profile.measurements.append(measure(gen, memory_at, memory_at, warmup=1, runs=1))
        if measured is not None:
            profile.measurements.append(measured)
    return d, manifest, profile


def png_bytes(w: int = 64, h: int = 48, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(0)
    if mode == "RGB":
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")
    elif mode == "RGBA":
        img = Image.fromarray(rng.integers(0, 255, (h, w, 4), dtype=np.uint8), "RGBA")
    elif mode == "L":
        img = Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), "L")
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
        assert img.mode.startswith("I;16"), img.mode
    elif mode == "CMYK":
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB").convert("CMYK")
    else:
        raise ValueError(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


class Server:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path, registry, s3, artifacts: dict, pre_ready: int):
        self.url, self.proc, self.log, self.registry, self.s3 = url, proc, log, registry, s3
        self.artifacts = artifacts
        self.readyz_before_promotion = pre_ready
        self.headers: dict[str, str] = {}  # e.g. the API key when the server requires one

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, headers=self.headers)

    def translate(self, c: httpx.Client, data: bytes | None = None, **fields) -> httpx.Response:
        form = {"task": TASK, "device_class": "desktop", **{k: str(v) for k, v in fields.items()}}
        return c.post("/translate", files={"image": ("x.png", data or png_bytes(), "image/png")}, data=form)

    def metric(self, c: httpx.Client, name: str, **labels: str) -> float:
        """Sum of samples of `name` whose labels include `labels`."""
        text = c.get("/metrics").text
        total, found = 0.0, False
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            m = re.match(r"^(\S+?)(\{(.*)\})? ([0-9.eE+-]+|NaN)$", line)
            if not m:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(4))
                found = True
        if not found:
            raise AssertionError(f"metric {name}{labels} not in /metrics")
        return total

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return ""


def service_env(s3_server, registry_location: str, tmp: Path, poll_s: float, workers: int, timeout_s: float) -> dict[str, str]:
    """The server's environment: this registry, temp caches and BENTOML_HOME, small limits for tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POCKETGAN_", "BENTOML_"))}
    env.update(s3_server.env())
    env.update({
        "POCKETGAN_REGISTRY": registry_location,
        "POCKETGAN_CACHE_DIR": str(tmp / "cache-service"),
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "POCKETGAN_SERVICE_TASKS": json.dumps([TASK]),
        "POCKETGAN_SERVICE_HARDWARE_TAG": TAG,
        "POCKETGAN_SERVICE_POLL_INTERVAL_S": str(poll_s),
        "POCKETGAN_SERVICE_RETRY_INTERVAL_S": "0.5",
        "POCKETGAN_SERVICE_WORKERS": str(workers),
        "POCKETGAN_SERVICE_MAX_CONCURRENCY": "4",
        "POCKETGAN_SERVICE_TIMEOUT_S": str(timeout_s),
        "POCKETGAN_SERVICE_MAX_BODY_BYTES": str(256 * 1024),
        "POCKETGAN_SERVICE_MAX_PIXELS": str(512 * 512),
        "POCKETGAN_SERVICE_INTRA_OP_THREADS": "1",
        "POCKETGAN_SERVICE_INFERENCE_THREADS": "2",
        "POCKETGAN_SERVICE_WARMUP_SIZE": "32",
        "POCKETGAN_SERVICE_RESOLVE_CACHE_S": "0",
        "POCKETGAN_SERVICE_BODY_TIMEOUT_S": "2",
        "OMP_NUM_THREADS": "1",
    })
    return env


@contextlib.contextmanager
def start_service(
    s3_server, tmp: Path, artifacts: list[tuple], promote: list[str], *,
    poll_s: float = 1.0, workers: int = 2, timeout_s: float = 4.0, env_overrides: dict[str, str] | None = None,
    api_key: str | None = None,
) -> Iterator[Server]:
    """Publish `artifacts` (name, width, seed, profile p95 ms[, make_artifact options]), serve, promote `promote`
    (names), wait for every worker.

    The server runs in its own process group and is stopped (SIGTERM, then SIGKILL) on exit.
    """
    from registry.client import Registry
    from registry.config import RegistrySettings

    prefix = f"svc-{uuid.uuid4().hex[:10]}"
    settings = RegistrySettings(
        registry=f"s3://{s3_server.bucket}/{prefix}", s3_endpoint=s3_server.endpoint, region=s3_server.region,
        cache_dir=tmp / "cache-test", access_key_id=s3_server.access_key, secret_access_key=s3_server.secret_key,
        actor="pytest@localhost",
    )
    registry = Registry(settings)
    ids = {}
    for name, width, seed, p95, *opts in artifacts:
        d, manifest, profile = make_artifact(tmp / "artifacts", width, seed, p95, **(opts[0] if opts else {}))
        registry.publish_dir(d)
        if profile is not None:
            registry.add_profile(manifest.artifact_id, profile, task=TASK)
        ids[name] = manifest.artifact_id

    env = service_env(s3_server, settings.registry, tmp, poll_s, workers, timeout_s)
    env.update(env_overrides or {})
    if api_key is not None:
        import hashlib

        env["POCKETGAN_SERVICE_API_KEY_HASHES"] = hashlib.sha256(api_key.encode()).hexdigest()
    log = tmp / "bentoml.log"
    launcher = ServiceProcess(env, log, cwd=REPO).start()
    srv = Server(launcher.url, launcher.proc, log, registry, s3_server, ids, pre_ready=-1)
    if api_key is not None:
        srv.headers["Authorization"] = f"Bearer {api_key}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        launcher.wait_for("/livez", START_TIMEOUT_S)  # up, but nothing promoted yet
        with httpx.Client(base_url=launcher.url, timeout=5.0) as c:
            time.sleep(2 * poll_s)  # at least one poll of the empty alias per worker
            srv.readyz_before_promotion = c.get("/readyz").status_code
            registry.promote(TASK, "production", [ids[n] for n in promote], actor="pytest")
            launcher.wait_for("/readyz", max(deadline - time.monotonic(), 1.0))
            # every worker loaded: each counts one swap in the aggregated counter
            while srv.metric(c, "pocketgan_model_swaps_total", task=TASK) < workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a worker never loaded:\n{srv.tail()}")
                time.sleep(0.3)
        yield srv
    finally:
        launcher.stop()
