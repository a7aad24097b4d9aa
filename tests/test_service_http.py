"""The translation service against a real `bentoml serve` (2 workers) and the real local S3.

One module-scoped server. Test data: tiny real ONNX conv generators with *synthetic* latency
profiles written through `Registry.add_profile` so selection is deterministic (these numbers are
test inputs, not measurement claims): SMALL (fewer MACs) p95 80 ms and LARGE p95 20 ms at 64x64.
Tests run in file order (pytest's default); the swap/corrupt tests come last because they
change the promoted set.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from PIL import Image

from _service_helpers import TAG, TASK, Server, make_artifact, png_bytes, start_service

POLL_S = 1.0
TIMEOUT_S = 4.0

pytestmark = pytest.mark.timeout(600)


ARTIFACTS = [("small", 8, 1, 80.0), ("large", 16, 2, 20.0), ("other", 12, 3, 50.0)]


@pytest.fixture(scope="module")
def server(s3_server, tmp_path_factory) -> Iterator[Server]:
    # observation correction is unit-tested (test_selection.py); here it is off so a slow CI box
    # cannot flip the deterministic, profile-driven choices below
    with start_service(
        s3_server, tmp_path_factory.mktemp("service"), ARTIFACTS, ["small", "large"], poll_s=POLL_S, workers=2,
        timeout_s=TIMEOUT_S, env_overrides={"POCKETGAN_SERVICE_MIN_OBSERVATIONS": "1000000"},
    ) as srv:
        yield srv


def test_readyz_503_before_promotion_then_ready(server: Server) -> None:
    assert server.readyz_before_promotion == 503
    with server.client() as c:
        assert c.get("/readyz").status_code == 200
        assert c.get("/livez").status_code == 200


def test_translate_round_trip_same_size_and_headers(server: Server) -> None:
    with server.client() as c:
        r = server.translate(c, png_bytes(60, 44), latency_budget_ms=1000)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        out = Image.open(io.BytesIO(r.content))
        assert out.size == (60, 44) and out.mode == "RGB"
        assert r.headers["X-Pocketgan-Artifact"] in server.artifacts.values()
        assert float(r.headers["X-Pocketgan-Actual-Ms"]) > 0
        assert r.headers["X-Pocketgan-Budget-Met"] in ("true", "false")
        jpeg = server.translate(c, png_bytes(fmt="JPEG"), output_format="webp")
        assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/webp"
        assert Image.open(io.BytesIO(jpeg.content)).format == "WEBP"


def test_selection_smallest_eligible_and_budget(server: Server) -> None:
    small, large = server.artifacts["small"], server.artifacts["large"]
    with server.client() as c:
        # loose budget: both eligible -> the smaller (fewer MACs), never the larger
        for _ in range(4):
            r = server.translate(c, latency_budget_ms=1000)
            assert r.status_code == 200 and r.headers["X-Pocketgan-Artifact"] == small
            assert r.headers["X-Pocketgan-No-Eligible"] == "false"
        # 40 ms: only LARGE's profile (20 ms at 64x64, ~15 ms at 64x48) fits
        r = server.translate(c, latency_budget_ms=40)
        assert r.status_code == 200 and r.headers["X-Pocketgan-Artifact"] == large
        assert float(r.headers["X-Pocketgan-Expected-Ms"]) <= 40
        # device class default budget (desktop: 80 ms) -> SMALL expected 60 ms at 64x48 fits
        r = server.translate(c)
        assert r.headers["X-Pocketgan-Artifact"] == small and r.headers["X-Pocketgan-Budget-Ms"] == "80"


def test_no_eligible_flagged_and_counted(server: Server) -> None:
    with server.client() as c:
        before = server.metric(c, "pocketgan_no_eligible_total", task=TASK, device_class="desktop")
        r = server.translate(c, latency_budget_ms=2)
        assert r.status_code == 200
        assert r.headers["X-Pocketgan-No-Eligible"] == "true"
        assert r.headers["X-Pocketgan-Artifact"] == server.artifacts["large"]  # the fastest expected
        assert server.metric(c, "pocketgan_no_eligible_total", task=TASK, device_class="desktop") == before + 1


@pytest.mark.parametrize(
    "mode,fmt", [("RGBA", "PNG"), ("L", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"), ("RGB", "WEBP")]
)
def test_colour_modes_are_converted(server: Server, mode: str, fmt: str) -> None:
    with server.client() as c:
        r = server.translate(c, png_bytes(40, 32, mode=mode, fmt=fmt), output_format="png")
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (40, 32)


def _bomb_png(side: int = 4000) -> bytes:
    """A tiny PNG that decodes to side*side pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _check_4xx(r: httpx.Response, status: int, reason: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["reason"] == reason and isinstance(body["error"], str) and "\n" not in body["error"]


def test_bad_inputs_are_one_line_json_4xx(server: Server) -> None:
    good = png_bytes()
    with server.client() as c:
        before = server.metric(c, "pocketgan_input_rejections_total", reason="unsupported_format")
        cases = [
            (dict(files={"image": ("x.png", b"GIF89a" + b"\0" * 100, "image/png")}), 415, "unsupported_format"),
            (dict(files={"image": ("x.png", good[: len(good) // 2], "image/png")}), 400, "corrupt_image"),
            (dict(files={"image": ("x.png", good[:8] + b"\0" * 200, "image/png")}), 400, "corrupt_image"),
            (dict(files={"image": ("x.png", b"", "image/png")}), 400, "empty_image"),
            (dict(files={"image": ("x.png", _bomb_png(), "image/png")}), 413, "too_many_pixels"),
            (dict(files={"image": ("x.png", os.urandom(300 * 1024), "image/png")}), 413, "body_too_large"),
            (dict(files={"other": ("x.png", good, "image/png")}), 400, "missing_image"),
        ]
        for kwargs, status, reason in cases:
            r = c.post("/translate", data={"task": TASK, "device_class": "desktop"}, **kwargs)
            _check_4xx(r, status, reason)
        for form, status, reason in [
            ({"task": "no-such-task", "device_class": "desktop"}, 400, "unknown_task"),
            ({"task": "../../etc", "device_class": "desktop"}, 400, "unknown_task"),
            ({"device_class": "desktop"}, 400, "bad_parameter"),
            ({"task": TASK, "device_class": "toaster"}, 400, "unknown_device_class"),
            ({"task": TASK, "device_class": "desktop", "latency_budget_ms": "-5"}, 400, "budget_out_of_range"),
            ({"task": TASK, "device_class": "desktop", "latency_budget_ms": "1e30"}, 400, "budget_out_of_range"),
            ({"task": TASK, "device_class": "desktop", "latency_budget_ms": "nan"}, 400, "budget_out_of_range"),
            ({"task": TASK, "device_class": "desktop", "latency_budget_ms": "fast"}, 400, "budget_out_of_range"),
            ({"task": TASK, "device_class": "desktop", "output_format": "gif"}, 400, "bad_parameter"),
        ]:
            r = c.post("/translate", data=form, files={"image": ("x.png", good, "image/png")})
            _check_4xx(r, status, reason)
        _check_4xx(c.post("/translate", content=good, headers={"content-type": "image/png"}), 415, "wrong_content_type")
        _check_4xx(c.post("/translate", json={"task": TASK}), 415, "wrong_content_type")
        r = c.post("/translate", content=b"--b\r\nContent-Disposition: form-data\r\n\r\n",
                   headers={"content-type": "multipart/form-data; boundary=b"})
        assert 400 <= r.status_code < 500 and "reason" in r.json()
        _check_4xx(c.post("/resolve", json={"task": TASK}), 400, "bad_parameter")
        _check_4xx(c.post("/resolve", json={"task": TASK, "hardware_tag": TAG, "latency_budget_ms": -1}), 400,
                   "budget_out_of_range")
        assert server.metric(c, "pocketgan_input_rejections_total", reason="unsupported_format") == before + 1
        # the worker is not stuck: a good request still works
        assert server.translate(c).status_code == 200


def test_overload_gives_429_json_never_5xx(server: Server) -> None:
    big = png_bytes(256, 256)
    import concurrent.futures as cf

    def one(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60.0) as c:
            r = server.translate(c, big, latency_budget_ms=1000)
            if r.status_code == 429:
                assert "error" in r.json()
            return r.status_code

    with cf.ThreadPoolExecutor(32) as ex:
        codes = list(ex.map(one, range(64)))
    assert set(codes) <= {200, 429}, codes
    assert 429 in codes and 200 in codes


def test_stalled_upload_gets_408_and_worker_stays_free(server: Server) -> None:
    """A client that stops sending mid-body (slowloris) gets 408 after the body deadline, connection closed."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n--b\r\n"
        )
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < int(
            re.search(rb"content-length: (\d+)", reply, re.I).group(1) if re.search(rb"content-length: (\d+)", reply, re.I) else 1
        ):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.decode(errors="replace").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 408"), head[:200]
    assert "connection: close" in head.lower()
    assert json.loads(body)["reason"] == "body_timeout"
    with server.client() as c:
        assert server.translate(c).status_code == 200


def test_resolve_presigned_url_matches_sha(server: Server) -> None:
    import hashlib

    with server.client() as c:
        r = c.post("/resolve", json={"task": TASK, "hardware_tag": TAG, "latency_budget_ms": 1000, "height": 64, "width": 64})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["artifact"]["artifact_id"] == server.artifacts["small"] and not body["no_eligible"]
        blob = httpx.get(body["url"], timeout=10).content
        assert hashlib.sha256(blob).hexdigest() == body["sha256"]
        r = c.post("/resolve", json={"task": TASK, "hardware_tag": "arm64-android", "latency_budget_ms": 100})
        assert r.status_code == 200 and r.json()["no_eligible"] is True  # no profile for that tag


def test_models_docs_and_metrics(server: Server) -> None:
    with server.client() as c:
        m = c.get("/models").json()
        t = m["tasks"][0]
        assert t["source"] == "registry" and set(t["promoted"]) == {server.artifacts["small"], server.artifacts["large"]}
        assert {a["summary"]["artifact_id"] for a in t["loaded"]} == set(t["promoted"])
        assert all(TAG in a["profiles"] for a in t["loaded"])
        paths = c.get("/docs.json").json()["paths"]
        assert {"/translate", "/resolve", "/models"} <= set(paths)
        assert "multipart/form-data" in paths["/translate"]["post"]["requestBody"]["content"]
        text = c.get("/metrics").text
        for name in [
            "pocketgan_request_duration_seconds_bucket", "pocketgan_inference_duration_seconds_bucket",
            "pocketgan_processing_duration_seconds_bucket", "pocketgan_budget_total", "pocketgan_selections_total",
            "pocketgan_no_eligible_total", "pocketgan_loaded_artifact_info", "pocketgan_serving_from_cache",
            "pocketgan_model_swaps_total", "pocketgan_model_swap_failures_total", "pocketgan_registry_poll_errors_total",
            "pocketgan_registry_seconds_since_last_successful_poll", "pocketgan_input_rejections_total",
        ]:
            assert name in text, name
        assert 'le="0.08"' in text and 'le="0.4"' in text  # budget buckets (s)
        # 2 workers: both loaded once, so the aggregated swap counter is (at least) 2
        assert server.metric(c, "pocketgan_model_swaps_total", task=TASK) >= 2


def _wait_for(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_promote_swaps_without_restart_or_failed_requests(server: Server) -> None:
    other = server.artifacts["other"]
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def loop() -> None:
        with server.client() as c:
            while not stop.is_set() and len(results) < 5000:
                r = server.translate(c, latency_budget_ms=1000)
                results.append((r.status_code, r.headers.get("X-Pocketgan-Artifact", "")))

    with server.client() as c:
        swaps_before = server.metric(c, "pocketgan_model_swaps_total", task=TASK)
    th = threading.Thread(target=loop, daemon=True)
    th.start()
    try:
        _wait_for(lambda: len(results) >= 3, 30, "background requests")
        server.registry.promote(TASK, "production", [other], actor="pytest")
        # both workers must have swapped (the aggregated counter grows by one per worker) ...
        with server.client() as c:
            _wait_for(lambda: server.metric(c, "pocketgan_model_swaps_total", task=TASK) >= swaps_before + 2,
                      20 * POLL_S, "both workers swapped")
        # ... and serve it: the last 10 responses all came from `other`
        _wait_for(lambda: len(results) > 10 and all(a == other for _, a in results[-10:]), 20 * POLL_S, "swap")
    finally:
        stop.set()
        th.join(timeout=30)
    assert all(code == 200 for code, _ in results), {code for code, _ in results}
    with server.client() as c:
        t = c.get("/models").json()["tasks"][0]
        assert t["promoted"] == [other]
        # the retired artifacts' series leave /metrics (no unbounded growth across promotions)
        text = c.get("/metrics").text
        assert f'artifact="{other}"' in text
        assert f'artifact="{server.artifacts["small"]}"' not in text and f'artifact="{server.artifacts["large"]}"' not in text


def test_corrupt_promoted_set_keeps_old_set(server: Server, tmp_path: Path) -> None:
    reg, s3 = server.registry, server.s3.boto3_client()
    d, manifest, profile = make_artifact(tmp_path, 24, 9, 10.0)
    reg.publish_dir(d)
    bad = manifest.artifact_id
    # corrupt model.onnx behind the registry's back, then point the alias at it directly
    key = reg.layout.artifact_prefix(TASK, bad) + "model.onnx"
    s3.put_object(Bucket=s3_bucket(reg), Key=key, Body=b"not an onnx model" * 100)
    alias_key = reg.layout.alias_key(TASK, "production")
    current = reg.read_alias(TASK, "production").alias
    tampered = current.model_copy(update={"revision": current.revision + 1, "artifacts": [bad]})
    with server.client() as c:
        before = server.metric(c, "pocketgan_model_swap_failures_total", task=TASK)
        s3.put_object(Bucket=s3_bucket(reg), Key=alias_key, Body=tampered.model_dump_json().encode())
        # both workers try and fail once each
        _wait_for(lambda: server.metric(c, "pocketgan_model_swap_failures_total", task=TASK) >= before + 2,
                  20 * POLL_S, "swap failure counted")
        for _ in range(6):
            r = server.translate(c, latency_budget_ms=1000)
            assert r.status_code == 200 and r.headers["X-Pocketgan-Artifact"] == server.artifacts["other"]
        assert server.metric(c, "pocketgan_model_swap_failures_total", task=TASK, reason="integrity") >= 2
        t = c.get("/models").json()["tasks"][0]
        assert t["promoted"] == [bad] and t["loaded_revision"] == current.revision and "revision" in t["last_error"]
        assert c.get("/readyz").status_code == 200


def s3_bucket(reg) -> str:
    return reg.settings.location()[0]


def test_access_log_line_per_request_by_default(server: Server) -> None:
    """ACCESS_LOG defaults to on: BentoML logs a line per request (test_service_abuse checks it can be off)."""
    with server.client() as c:
        assert server.translate(c, png_bytes(32, 32), latency_budget_ms=1000).status_code == 200
    deadline = time.monotonic() + 10
    while "path=/translate" not in server.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "no access log line for POST /translate"
        time.sleep(0.2)
