"""Serving trust against a real `bentoml serve` (1 worker) and the real local S3 (issue 11):

- the service's contract gate: a set with one artifact that is not a servable generator is
  refused whole (`pocketgan_model_swap_failures_total{reason="contract"}`), the old set keeps serving;
- a model that raises at run time: the request is retried on the next choice (never a 500), the
  circuit breaker ejects it for a cool-down, /readyz is 503 only while a task has nothing servable;
- the tiny-image poisoning sequence no longer moves the latency correction;
- per-device-class selection policy (`best-quality` for phone-low here).

Profiles are synthetic test inputs (deterministic selection), the models are real ONNX graphs.
One server for the module; tests run in file order and each promotes the set it needs.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from PIL import Image

import _bad_models as bad
from _service_helpers import TAG, TASK, Server, png_bytes, start_service
from conftest import build_tiny_onnx

POLL_S = 0.5
COOLDOWN_S = 3.0
pytestmark = pytest.mark.timeout(600)

STATUSES: list[int] = []  # every /translate status of the module: never a 500


@pytest.fixture(scope="module")
def server(s3_server, tmp_path_factory) -> Iterator[Server]:
    env = {
        "POCKETGAN_SERVICE_BREAKER_FAILURES": "2",
        "POCKETGAN_SERVICE_BREAKER_COOLDOWN_S": str(COOLDOWN_S),
        "POCKETGAN_SERVICE_DEVICE_CLASS_POLICIES": json.dumps({"phone-low": "best-quality"}),
        "POCKETGAN_SERVICE_MIN_OBSERVATIONS": "2",
    }
    with start_service(
        s3_server, tmp_path_factory.mktemp("trust"), [("a", 4, 1, 10.0), ("b", 8, 2, 20.0)], ["a", "b"],
        poll_s=POLL_S, workers=1, timeout_s=10.0, env_overrides=env,
    ) as srv:
        yield srv
    assert 500 not in STATUSES, STATUSES


def translate(server: Server, c, data: bytes | None = None, **fields):  # noqa: ANN001, ANN201
    r = server.translate(c, data, **fields)
    STATUSES.append(r.status_code)
    return r


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def publish(server: Server, root: Path, name: str, builder, p95_ms: float, **kw) -> str:  # noqa: ANN001
    """Publish through the registry (contract checked) with a synthetic profile for TAG."""
    import onnxruntime as ort

    from registry.manifest import HardwareProfile, LatencyMeasurement

    d, manifest = bad.artifact_dir(root, name, builder, task=TASK, macs=None, **kw)
    server.registry.publish_dir(d)
    server.registry.add_profile(manifest.artifact_id, HardwareProfile(
        hardware_tag=TAG, runtime_version=ort.__version__,
        measurements=[LatencyMeasurement(height=64, width=64, runs=20, p50_ms=p95_ms * 0.8, p95_ms=p95_ms,
                                         p99_ms=p95_ms * 1.1, throughput_ips=1000.0 / p95_ms)],
    ), task=TASK)
    return manifest.artifact_id


def promote_and_wait(server: Server, c, ids: list[str]) -> None:  # noqa: ANN001
    server.registry.promote(TASK, "production", ids, actor="pytest")
    wait_for(lambda: [a["summary"]["artifact_id"] for a in c.get("/models").json()["tasks"][0]["loaded"]] == ids,
             f"set {ids} loaded")


def models_task(c) -> dict:  # noqa: ANN001
    return c.get("/models").json()["tasks"][0]


# -- the service's contract gate -------------------------------------------------------------------

SERVICE_ROWS = {
    # honestly declared 1 -> 3: a valid generator, but the service translates RGB to RGB
    "input-1ch-declared": (bad.one_channel_input, {"input_nc": 1}, "translates RGB to RGB"),
    "input-4ch-lying": (bad.four_channel_input, {}, "input has 4 channel(s)"),
    "output-1ch-declared": (bad.one_channel_output, {"output_nc": 1}, "translates RGB to RGB"),
    "empty": (bad.empty_file, {}, "empty"),
    "ir-too-new": (bad.ir_version_too_new, {}, "IR version"),
    "identity-0-macs": (bad.identity, {}, "0 MACs"),
    "static-7x7": (bad.static_7x7, {}, "fixed at 7x7"),
}


def test_a_set_with_one_non_generator_is_refused_whole(server: Server, tmp_path: Path) -> None:
    a, b = server.artifacts["a"], server.artifacts["b"]
    with server.client() as c:
        for row, (builder, decl, reason) in SERVICE_ROWS.items():
            d, manifest = bad.artifact_dir(tmp_path, row, builder, task=TASK, macs=None if row != "empty" else 1000, **decl)
            aid = bad.sneak_in(server.registry, d, manifest)  # slipped past publish and promote
            before = server.metric(c, "pocketgan_model_swap_failures_total", task=TASK, reason="contract")
            revision = bad.point_alias(server.registry, TASK, "production", [b, aid])
            wait_for(lambda: server.metric(c, "pocketgan_model_swap_failures_total", task=TASK, reason="contract") > before,
                     f"{row}: contract failure counted")
            t = models_task(c)
            # /models names what failed and how; the reason itself is in the log (no paths or endpoints in /models)
            assert t["promoted_revision"] == revision, row
            assert t["last_error"] == f"load of revision {revision}: ContractViolation", (row, t["last_error"])
            wait_for(lambda: reason in server.log.read_text(errors="replace"), f"{row}: reason in the log")
            assert [x["summary"]["artifact_id"] for x in t["loaded"]] == [a, b], row  # old set, b not swapped in alone
            r = translate(server, c, latency_budget_ms=1000)
            assert r.status_code == 200 and r.headers["X-Pocketgan-Artifact"] == a, row
            assert c.get("/readyz").status_code == 200
        assert server.metric(c, "pocketgan_model_swap_failures_total", task=TASK, reason="contract") >= len(SERVICE_ROWS)


def test_a_model_that_needs_8px_serves_a_2x2_upload(server: Server, tmp_path: Path) -> None:
    with server.client() as c:
        rp = publish(server, tmp_path, "reflect", bad.reflect_pad, 10.0)
        promote_and_wait(server, c, [rp])
        r = translate(server, c, png_bytes(2, 2), latency_budget_ms=1000)
        assert r.status_code == 200 and r.headers["X-Pocketgan-Artifact"] == rp
        assert models_task(c)["loaded"][0]["min_side"] == 8
        assert Image.open(io.BytesIO(r.content)).size == (2, 2)


# -- latency correction --------------------------------------------------------------------------

def test_tiny_images_do_not_poison_the_latency_correction(server: Server) -> None:
    a, b = server.artifacts["a"], server.artifacts["b"]
    with server.client() as c:
        promote_and_wait(server, c, [a, b])
        big = png_bytes(128, 128)
        first = [translate(server, c, big) for _ in range(3)]
        tiny = [translate(server, c, png_bytes(2, 2)) for _ in range(6)]
        last = translate(server, c, big)
        for r in (*first, *tiny, last):
            assert r.status_code == 200 and r.headers["X-Pocketgan-Artifact"] == a
        # a's profile: 10 ms at 64x64 -> 40 ms at 128x128, within desktop's 80 ms; unchanged by the 2x2 uploads
        assert last.headers["X-Pocketgan-No-Eligible"] == "false"
        assert float(last.headers["X-Pocketgan-Expected-Ms"]) == pytest.approx(40.0)
        observed = next(x for x in models_task(c)["loaded"] if x["summary"]["artifact_id"] == a)["observed"]
        assert observed["count"] == 4  # the four 128x128 requests; none of the 2x2 (nor the earlier 64x48) ones
        assert server.metric(c, "pocketgan_no_eligible_total", task=TASK) == 0


# -- selection policy ----------------------------------------------------------------------------

def test_best_quality_policy_per_device_class(server: Server, tmp_path: Path) -> None:
    with server.client() as c:
        lo = publish(server, tmp_path, "lo", lambda p: build_tiny_onnx(p, seed=21, width=4), 10.0,
                     method="gan-compression", ssim=0.4)
        hi = publish(server, tmp_path, "hi", lambda p: build_tiny_onnx(p, seed=22, width=16), 30.0,
                     method="gan-compression", ssim=0.8)
        promote_and_wait(server, c, [lo, hi])
        r = translate(server, c, device_class="phone-low")  # best-quality, 400 ms
        assert r.status_code == 200 and r.headers["X-Pocketgan-Artifact"] == hi
        assert r.headers["X-Pocketgan-Policy"] == "best-quality"
        r = translate(server, c, device_class="desktop")  # smallest (default), 80 ms
        assert r.headers["X-Pocketgan-Artifact"] == lo and r.headers["X-Pocketgan-Policy"] == "smallest"
        # best quality *within the budget*: hi expects 22.5 ms at 64x48, over a 20 ms budget
        r = translate(server, c, device_class="phone-low", latency_budget_ms=20)
        assert r.headers["X-Pocketgan-Artifact"] == lo and r.headers["X-Pocketgan-No-Eligible"] == "false"
        assert server.metric(c, "pocketgan_policy_selections_total", device_class="phone-low", policy="best-quality") == 2
        assert server.metric(c, "pocketgan_policy_selections_total", device_class="desktop", policy="smallest") >= 1


# -- run-time failures: fallback, circuit breaker, readiness ----------------------------------------

def test_a_failing_model_falls_back_then_is_ejected(server: Server, tmp_path: Path) -> None:
    a = server.artifacts["a"]
    non_square, square = png_bytes(64, 48), png_bytes(64, 64)
    with server.client() as c:
        sq = publish(server, tmp_path, "square-only", bad.square_only, 5.0)  # passes the contract, smallest
        promote_and_wait(server, c, [sq, a])
        assert translate(server, c, square).headers["X-Pocketgan-Artifact"] == sq
        for _ in range(2):  # 2 failures in a row eject it (BREAKER_FAILURES=2)
            r = translate(server, c, non_square)
            assert r.status_code == 200, r.text
            assert r.headers["X-Pocketgan-Artifact"] == a and r.headers["X-Pocketgan-Fallback-From"] == sq
            assert Image.open(io.BytesIO(r.content)).size == (64, 48)
        assert server.metric(c, "pocketgan_model_failures_total", artifact=sq) == 2
        assert server.metric(c, "pocketgan_fallbacks_total", task=TASK) == 2
        assert server.metric(c, "pocketgan_artifact_ejections_total", artifact=sq) == 1
        assert server.metric(c, "pocketgan_artifact_ejected", artifact=sq) == 1
        loaded = {x["summary"]["artifact_id"]: x for x in models_task(c)["loaded"]}
        assert 0 < loaded[sq]["ejected_for_s"] <= COOLDOWN_S and loaded[a]["ejected_for_s"] == 0
        r = translate(server, c, square)  # ejected: not even tried
        assert r.headers["X-Pocketgan-Artifact"] == a and "X-Pocketgan-Fallback-From" not in r.headers
        assert c.get("/readyz").status_code == 200  # a is still servable
        time.sleep(COOLDOWN_S + 0.2)
        r = translate(server, c, square)  # cool-down over: selectable again
        assert r.status_code == 200 and r.headers["X-Pocketgan-Artifact"] == sq
        assert server.metric(c, "pocketgan_artifact_ejected", artifact=sq) == 0

        # alone in its set: a failure has nowhere to fall back -> 503 (not 500); ejected -> not ready
        promote_and_wait(server, c, [sq])
        for _ in range(2):
            r = translate(server, c, non_square)
            assert r.status_code == 503 and r.json()["reason"] == "no_servable_model" and r.headers["Retry-After"]
        assert c.get("/readyz").status_code == 503
        r = translate(server, c, square)
        assert r.status_code == 503 and r.json()["reason"] == "no_servable_model"
        time.sleep(COOLDOWN_S + 0.2)
        assert c.get("/readyz").status_code == 200
        promote_and_wait(server, c, [a])
