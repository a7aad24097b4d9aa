"""Latency profiles: measured here, written to the real (SeaweedFS) S3 registry, found by hardware tag."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from compression_jobs.export import export_artifact
from compression_jobs.hardware import resolve_hardware_tag
from compression_jobs.models import mobile_resnet_generator
from compression_jobs.profiling import profile_model
from registry.errors import InvalidInput

torch.set_num_threads(1)


@pytest.fixture
def artifact_dir(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "art"
    export_artifact(mobile_resnet_generator("8_8_16_8_16_16_8_8", n_blocks=3), out, task="facades-label2photo",
                    method="gan-compression", exporter="torchscript")
    return out


def test_profile_model_measures_every_point(artifact_dir):
    p = profile_model(artifact_dir / "model.onnx", resolutions=[(32, 32), (48, 64)], batches=[1, 2], warmup=1, runs=5,
                      threads=1, provider="CPUExecutionProvider", hardware_tag="test-cpu", progress=False)
    assert p.hardware_tag == "test-cpu" and p.threads == 1 and p.execution_provider == "CPUExecutionProvider"
    points = [(m.height, m.width, m.batch) for m in p.measurements]
    assert points == [(32, 32, 1), (32, 32, 2), (48, 64, 1), (48, 64, 2)]
    for m in p.measurements:
        assert m.runs >= 5 and 0 < m.p50_ms <= m.p95_ms <= m.p99_ms and m.throughput_ips > 0
        assert m.peak_memory_mb is not None and m.peak_memory_mb >= 0
        assert m.peak_bytes_per_pixel is not None and m.peak_bytes_per_pixel >= 0  # /proc: the peak can be reset
    assert p.nearest(50, 60).height == 48


def test_min_time_extends_runs(artifact_dir):
    p = profile_model(artifact_dir / "model.onnx", resolutions=[(16, 16)], warmup=0, runs=2, min_time_s=0.2, threads=1,
                      provider="CPUExecutionProvider", progress=False)
    assert p.measurements[0].runs > 2


def test_hardware_tag_override_is_validated():
    assert resolve_hardware_tag("arm64-android") == "arm64-android"
    with pytest.raises(InvalidInput):
        resolve_hardware_tag("../evil")
    assert resolve_hardware_tag(None, "CPUExecutionProvider").startswith("cpu-")


def test_profile_cli_writes_to_s3_registry_and_ls_finds_it(registry, registry_env, artifact_dir, tmp_path):
    published = registry.publish_dir(artifact_dir).manifest
    aid = published.artifact_id
    cmd = [sys.executable, "-m", "pocketgan", "profile", aid, "--hardware-tag", "test-phone-x", "--resolution", "32",
           "--resolution", "32x48", "--runs", "3", "--warmup", "1", "--threads", "1", "--json"]
    run = subprocess.run(cmd, env=registry_env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert printed[0]["artifact_id"] == aid and printed[0]["written"] is True
    found = registry.list(hardware_tag="test-phone-x")
    assert [m.artifact_id for m in found] == [aid]
    prof = found[0].profile("test-phone-x")
    assert [(m.height, m.width) for m in prof.measurements] == [(32, 32), (32, 48)] and prof.threads == 1
    assert registry.list(hardware_tag="some-other-tag") == []
    ls = subprocess.run([sys.executable, "-m", "pocketgan", "registry", "ls", "--hardware-tag", "test-phone-x", "--json"],
                        env=registry_env, capture_output=True, text=True, timeout=120)
    assert ls.returncode == 0, ls.stderr
    assert aid in ls.stdout

    # --task: every artifact of the task (detected tag), human table output
    run = subprocess.run([sys.executable, "-m", "pocketgan", "profile", "--task", "facades-label2photo", "--resolution", "16",
                          "--runs", "2", "--warmup", "0", "--threads", "1", "--provider", "CPUExecutionProvider"],
                         env=registry_env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    tag = resolve_hardware_tag(None, "CPUExecutionProvider")
    assert tag in run.stdout and [m.artifact_id for m in registry.list(hardware_tag=tag)] == [aid]
    bad = subprocess.run([sys.executable, "-m", "pocketgan", "profile", aid, "--hardware-tag", "Bad/Tag"],
                         env=registry_env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "hardware tag" in bad.stderr


def test_profile_promoted_set_only(registry, registry_env, artifact_dir, tmp_path):
    promoted = registry.publish_dir(artifact_dir).manifest.artifact_id
    other_dir = tmp_path / "other"
    export_artifact(mobile_resnet_generator("8_8_8_8_8_8_8_8", n_blocks=3), other_dir, task="facades-label2photo",
                    method="gan-compression", exporter="torchscript")
    other = registry.publish_dir(other_dir).manifest.artifact_id
    registry.promote("facades-label2photo", "production", [promoted])
    run = subprocess.run([sys.executable, "-m", "pocketgan", "profile", "--task", "facades-label2photo", "--promoted",
                          "--resolution", "16", "--runs", "2", "--warmup", "0", "--threads", "1", "--dry-run", "--json"],
                         env=registry_env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert [p["artifact_id"] for p in printed] == [promoted] and printed[0]["written"] is False
    assert other != promoted and registry.list(hardware_tag=printed[0]["hardware_tag"]) == []  # dry run wrote nothing


def test_cuda_profile_where_cuda_is_not_usable_fails_and_writes_nothing(registry, registry_env, artifact_dir):
    """Asking for the CUDA EP on a machine where it cannot run (no GPU, or no CUDA 13/cuDNN 9) is an
    error with its own exit code, and no profile is written; nor can a CPU run carry a cuda tag."""
    from registry.errors import ExecutionProviderUnavailable
    from registry.runtime import CUDA, cuda_usable

    if cuda_usable():
        pytest.skip("CUDA really works here: the refusal path needs a machine without it")
    with pytest.raises(ExecutionProviderUnavailable, match="not usable here|not available"):
        profile_model(artifact_dir / "model.onnx", resolutions=[(16, 16)], runs=1, warmup=0, provider=CUDA, progress=False)
    aid = registry.publish_dir(artifact_dir).manifest.artifact_id
    base = [sys.executable, "-m", "pocketgan", "profile", aid, "--resolution", "16", "--runs", "2", "--warmup", "0", "--threads", "1"]
    for extra in (["--provider", CUDA, "--hardware-tag", "cuda-sm90"], ["--provider", CUDA],
                  ["--provider", "CPUExecutionProvider", "--hardware-tag", "cuda-sm90"], ["--hardware-tag", "cuda-sm90"]):
        run = subprocess.run([*base, *extra, "--json"], env=registry_env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 9, (extra, run.returncode, run.stderr)
        assert run.stdout == "" and run.stderr.startswith("error: ") and "Traceback" not in run.stderr
        assert "weights_only" not in run.stderr
    assert registry.get_manifest(aid).profiles == []
    assert registry.list(hardware_tag="cuda-sm90") == []
