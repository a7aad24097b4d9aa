"""Shared fixtures: one real SeaweedFS S3 server per test session, a fresh registry per test.

Fixture names are a contract other test modules rely on:

- `s3_server` (session): a running local S3 (`LocalS3Handle`: endpoint, pid, access_key, ...,
  `.boto3_client()` for tampering behind the registry's back). Stopped by PID at the end.
- `registry_settings`: `RegistrySettings` for a fresh, unique prefix on that server.
- `registry`: a `registry.client.Registry` on that prefix (empty at the start of each test).
- `registry_env`: a complete environment dict (os.environ + AWS_* + POCKETGAN_REGISTRY,
  POCKETGAN_S3_ENDPOINT, POCKETGAN_CACHE_DIR) for `subprocess.run(..., env=registry_env)`;
  it points at the same prefix and cache as `registry`.
- `tiny_onnx`: path to a small real ONNX conv generator (3->8->3 channels, dynamic H/W).
- `make_tiny_onnx`: factory `make_tiny_onnx(path, seed=0, width=8) -> Path` for distinct models.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from registry.local_s3 import LocalS3Handle, start_local_s3, stop

TEST_BUCKET = "pocketgan-test"


def pid_alive(pid: int) -> bool:
    """True if `pid` runs; a zombie does not count (/proc says so)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def build_tiny_onnx(path: Path, seed: int = 0, width: int = 8, in_nc: int = 3, out_nc: int = 3) -> Path:
    """Conv(in->width, 3x3) -> Relu -> Conv(width->out, 3x3) -> Tanh, NCHW with dynamic H/W.

    Deterministic for a given (seed, width): same bytes, same artifact id.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array((rng.standard_normal((width, in_nc, 3, 3)) * 0.1).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(np.zeros(width, np.float32), "b1")
    w2 = numpy_helper.from_array((rng.standard_normal((out_nc, width, 3, 3)) * 0.1).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(out_nc, np.float32), "b2")
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["h1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("Conv", ["h2", "w2", "b2"], ["h3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["h3"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_generator",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, in_nc, "height", "width"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, out_nc, "height", "width"])],
        initializer=[w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pocketgan-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Handle]:
    """One SeaweedFS for the whole session, on random free ports, stopped by PID at the end."""
    handle = start_local_s3(tmp_path_factory.mktemp("seaweedfs"), bucket=TEST_BUCKET)
    try:
        yield handle
    finally:
        stop(handle.pid)


@pytest.fixture
def registry_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def make_registry_settings(s3_server: LocalS3Handle, prefix: str, cache_dir: Path):  # noqa: ANN201 - RegistrySettings
    """Settings for a registry under `prefix` of the session's SeaweedFS bucket."""
    from registry.config import RegistrySettings

    return RegistrySettings(
        registry=f"s3://{s3_server.bucket}/{prefix}",
        s3_endpoint=s3_server.endpoint,
        region=s3_server.region,
        cache_dir=cache_dir,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
        actor="pytest@localhost",
    )


@pytest.fixture
def registry_settings(s3_server: LocalS3Handle, registry_prefix: str, tmp_path: Path):
    return make_registry_settings(s3_server, registry_prefix, tmp_path / "cache")


@pytest.fixture
def registry(registry_settings):
    from registry.client import Registry

    return Registry(registry_settings)


@pytest.fixture(scope="module")
def module_registry(s3_server: LocalS3Handle, tmp_path_factory: pytest.TempPathFactory):
    """A registry on a fresh prefix shared by one module's tests (for runs that a module does once)."""
    from registry.client import Registry

    return Registry(make_registry_settings(s3_server, f"t-{uuid.uuid4().hex[:12]}", tmp_path_factory.mktemp("cache")))


@pytest.fixture
def registry_env(s3_server: LocalS3Handle, registry_settings, tmp_path: Path) -> dict[str, str]:
    """Full environment for subprocesses (CLI, `bentoml serve`) using the same registry as `registry`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POCKETGAN_"))}
    env.update(s3_server.env())
    env.update(
        {
            "POCKETGAN_REGISTRY": registry_settings.registry,
            "POCKETGAN_CACHE_DIR": str(registry_settings.cache_dir),
            "POCKETGAN_ACTOR": "pytest-cli@localhost",
            # keep a developer's ~/.aws out of the tests
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return env


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for the test: tests share 2 cores, and two threads stall small convolutions."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_tiny_onnx(tmp_path: Path) -> Callable[..., Path]:
    def make(path: Path | None = None, seed: int = 0, width: int = 8) -> Path:
        target = path or tmp_path / f"tiny-{seed}-{width}" / "model.onnx"
        return build_tiny_onnx(target, seed=seed, width=width)

    return make


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    return build_tiny_onnx(tmp_path / "tiny" / "model.onnx")

