"""Hostile clients against a real `bentoml serve` (1 worker, API keys on, internal routes for loopback only).

One module-scoped server. Its only artifact is the reflect-pad test generator (smallest side 4 px)
with a *real* memory measurement at 1024x1024 (compression_jobs.profiling.measure) so admission works
from a measured peak bytes/pixel; the worker's memory budget is set to 1.1x the estimated cost of a
4096x4096 request: one fits, two at once do not, 4600x4600 never does.
Worker memory is read from /proc/<pid>/status of the worker process (a child of `bentoml serve`).
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import socket
import struct
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from _service_helpers import TASK, Server, png_bytes, start_service

pytestmark = pytest.mark.timeout(900)

API_KEY = "test-key-0123456789"
BIG = 4096


def _zeros_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


BPP: list[float] = []  # the artifact's measured peak bytes/pixel (set by the fixture)


def _estimated_cost(side: int) -> int:
    """What the service admits a side x side request at (its own formula and defaults)."""
    from service.settings import ServiceSettings

    return int(side * side * (BPP[0] + ServiceSettings().service_bytes_per_pixel))


@pytest.fixture(scope="module")
def server(s3_server, tmp_path_factory) -> Iterator[Server]:
    from _service_helpers import make_artifact

    tmp = tmp_path_factory.mktemp("abuse")
    _, _, profile = make_artifact(tmp / "probe", 4, 7, 50.0, reflect=True, memory_at=1024)
    measured = profile.measurements[-1]
    assert measured.peak_bytes_per_pixel
    BPP.append(measured.peak_bytes_per_pixel)
    budget = int(_estimated_cost(BIG) * 1.1)
    env = {
        "POCKETGAN_SERVICE_MAX_CONCURRENCY": "4",
        "POCKETGAN_SERVICE_MAX_BODY_BYTES": str(1024 * 1024),
        "POCKETGAN_SERVICE_MAX_PIXELS": str(4700 * 4700),
        "POCKETGAN_SERVICE_MEMORY_BUDGET_BYTES": str(budget),
        "POCKETGAN_SERVICE_MAX_UPLOADS": "100",
        "POCKETGAN_SERVICE_INTERNAL_NETWORKS": '["127.0.0.0/8"]',
        "POCKETGAN_SERVICE_MIN_OBSERVATIONS": "1000000",
        "POCKETGAN_SERVICE_ACCESS_LOG": "false",  # the edge's checks do not depend on it (and it is checked off)
        # "public" S3 address: another name for the same server, as a phone-facing address would be
        "POCKETGAN_S3_PUBLIC_ENDPOINT": s3_server.endpoint.replace("127.0.0.1", "localhost"),
    }
    with start_service(
        s3_server, tmp, [("reflect", 4, 7, 50.0, {"reflect": True, "measured": measured})], ["reflect"],
        workers=1, timeout_s=120.0, env_overrides=env, api_key=API_KEY,
    ) as srv:
        yield srv


def _worker_pid(srv: Server) -> int:
    """The one worker process (a child of `bentoml serve`): /models names it; check it really is one."""
    with srv.client() as c:
        pid = c.get("/models").json()["worker_pid"]
    ancestor = pid
    while ancestor not in (0, 1, srv.proc.pid):
        ancestor = _status_field(ancestor, "PPid")  # (a plain number field, read the same way)
    assert ancestor == srv.proc.pid and pid != srv.proc.pid
    return pid


def _status_field(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def _check_error(r: httpx.Response, status: int, reason: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "reason", "request_id"} and body["reason"] == reason, body
    assert r.headers["x-request-id"] == body["request_id"]
    if status in (429, 503):
        assert int(r.headers["retry-after"]) >= 1
    return body


def _translate(srv: Server, c: httpx.Client, data: bytes, **headers: str) -> httpx.Response:
    return c.post("/translate", files={"image": ("x.png", data, "image/png")},
                  data={"task": TASK, "device_class": "desktop", "latency_budget_ms": "60000"}, headers=headers)


def test_api_keys_401_json_and_internal_routes(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anon:
        r = _translate(server, anon, png_bytes())
        _check_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        _check_error(anon.post("/resolve", json={"task": TASK, "hardware_tag": "x", "latency_budget_ms": 100},
                               headers={"Authorization": "Bearer not-the-key"}), 401, "unauthorized")
        assert anon.get("/livez").status_code == 200 and anon.get("/readyz").status_code == 200
        assert anon.get("/models").status_code == 200  # loopback, direct: inside the "cluster"
        _check_error(anon.get("/metrics", headers={"X-Forwarded-For": "198.51.100.7"}), 403, "forbidden")
        _check_error(anon.get("/models", headers={"X-Forwarded-For": "198.51.100.7"}), 403, "forbidden")
    with server.client() as c:
        assert _translate(server, c, png_bytes()).status_code == 200


def test_resolve_presigns_for_the_public_endpoint(server: Server) -> None:
    import hashlib

    public = server.s3.endpoint.replace("127.0.0.1", "localhost")
    with server.client() as c:
        r = c.post("/resolve", json={"task": TASK, "hardware_tag": "test-cpu", "latency_budget_ms": 1000})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["url"].startswith(public + "/"), body["url"][:80]
    blob = httpx.get(body["url"], timeout=10).content  # signed for that host, and valid there
    assert hashlib.sha256(blob).hexdigest() == body["sha256"]


def test_one_error_shape_request_ids_and_no_per_path_series(server: Server) -> None:
    with server.client() as c:
        r = c.get("/no/such/path", headers={"X-Request-Id": "client-id-42"})
        assert _check_error(r, 404, "not_found")["request_id"] == "client-id-42"
        r = c.get("/translate")
        _check_error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "POST"
        r = c.post("/models")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        r = c.get("/livez", headers={"X-Request-Id": "bad id with spaces"})
        assert r.status_code == 200 and r.headers["x-request-id"] != "bad id with spaces"
        _check_error(c.post("/translate", content=b"x", headers={"content-type": "image/png"}), 415, "wrong_content_type")
        _check_error(c.post("/resolve", json={"task": TASK}), 400, "bad_parameter")
        before = c.get("/metrics").text
        rng = np.random.default_rng(0)
        for i in range(100):
            path = "/" + "".join(rng.choice(list("abcdefghij0123456789"), 12)) + f"/{i}"
            assert c.get(path).status_code == 404
        after = c.get("/metrics").text
        series = lambda text: {ln.rsplit(" ", 1)[0] for ln in text.splitlines() if ln and not ln.startswith("#")}  # noqa: E731
        new = series(after) - series(before)
        assert not [s for s in new if "endpoint=" in s], sorted(new)[:5]
        assert all(s.startswith("pocketgan_http_refusals_total") or "bentoml" not in s for s in new)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (256, 1), (2, 300), (1, 64), (3, 5)])
def test_images_below_the_models_smallest_side_are_sized_up_and_served(server: Server, size: tuple[int, int]) -> None:
    """The reflect-pad model needs 4 px a side (its contract records it): smaller sides are sized up
    for inference and the output is returned at the client's size, never a 500."""
    with server.client() as c:
        r = _translate(server, c, png_bytes(*size))
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == size


def _jpeg_with_app1(payload: bytes) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((24, 32, 3), 120, np.uint8)).save(buf, format="JPEG")
    j = buf.getvalue()
    return j[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + j[2:]


def test_malformed_exif_is_ignored_never_500(server: Server) -> None:
    def ifd(entries: list[tuple[int, int, int, bytes]]) -> bytes:
        out = b"MM\x00*\x00\x00\x00\x08" + struct.pack(">H", len(entries))
        return out + b"".join(struct.pack(">HHI", *e[:3]) + e[3] for e in entries) + b"\x00\x00\x00\x00"

    cases = [
        b"Exif\x00\x00garbage!",
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12",
        b"Exif\x00\x00" + ifd([(0x0112, 3, 1, b"\x00\x06\x00\x00"), (0x8769, 4, 1, struct.pack(">I", 5000))]),
        b"Exif\x00\x00" + ifd([(0x0112, 3, 1, b"\x00\x06\x00\x00"), (0x010E, 2, 100000, struct.pack(">I", 8))]),
    ]
    with server.client() as c:
        for payload in cases:
            r = _translate(server, c, _jpeg_with_app1(payload))
            assert r.status_code in (200, 400), (payload, r.status_code, r.text)
            if r.status_code == 400:
                _check_error(r, 400, "corrupt_image")


def test_slow_uploads_do_not_starve_a_normal_client(server: Server) -> None:
    """64 connections send half a body and stall; a normal client keeps getting 200; they get 408 and are closed."""
    host, port = server.url.removeprefix("http://").split(":")
    head = (f"POST /translate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n").encode()
    stalled = []
    try:
        for _ in range(64):
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall(head)
            stalled.append(s)
        with server.client() as c:
            codes = [_translate(server, c, png_bytes(32, 32)).status_code for _ in range(10)]
            assert c.get("/livez").status_code == 200
        assert codes == [200] * 10, codes
        replies = []
        for s in stalled:  # each one: 408 JSON, then the server closes the connection (EOF)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            replies.append(data.decode(errors="replace"))
        assert all(r.startswith("HTTP/1.1 408") and '"body_timeout"' in r for r in replies), replies[0][:300]
    finally:
        for s in stalled:
            s.close()
    with server.client() as c:
        assert _translate(server, c, png_bytes(32, 32)).status_code == 200


def test_cost_admission_413_when_it_could_never_fit(server: Server) -> None:
    with server.client() as c:
        body = _check_error(_translate(server, c, _zeros_png(4600, 4600)), 413, "too_many_pixels")
        assert "MiB" in body["error"]


def test_big_request_memory_is_bounded_and_given_back(server: Server) -> None:
    """One 4096x4096 request: the worker's peak RSS growth stays within the admitted estimate, and the
    memory is returned afterwards (no ORT arena keeping its high-water mark); a second one while the
    first is in flight gets 503 busy with Retry-After."""
    pid = _worker_pid(server)
    data = _zeros_png(BIG, BIG)
    with server.client(timeout=300) as c:
        assert _translate(server, c, png_bytes(64, 64)).status_code == 200
        time.sleep(0.5)
        base_kib = _status_field(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM (peak RSS) of the worker
        with cf.ThreadPoolExecutor(1) as ex:
            first = ex.submit(_translate, server, c, data)
            deadline = time.monotonic() + 120
            while server.metric(c, "pocketgan_admitted_bytes") <= 0:  # the first is admitted and in flight
                assert not first.done() and time.monotonic() < deadline, "first request never seen in flight"
                time.sleep(0.05)
            second = _translate(server, c, data)
            r = first.result()
        _check_error(second, 503, "busy")
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (BIG, BIG)
        time.sleep(0.5)
        peak_kib, after_kib = _status_field(pid, "VmHWM"), _status_field(pid, "VmRSS")
    growth = (peak_kib - base_kib) * 1024
    kept = (after_kib - base_kib) * 1024
    estimate = _estimated_cost(BIG)
    print(f"\n4096x4096 request: worker RSS {base_kib / 1024:.0f} MiB -> peak {peak_kib / 1024:.0f} MiB "
          f"(+{growth / 2**20:.0f} MiB; admitted at {estimate / 2**20:.0f} MiB) -> after {after_kib / 1024:.0f} MiB "
          f"(kept {kept / 2**20:+.0f} MiB)")
    assert growth <= estimate, (growth, estimate)
    assert kept <= 0.2 * growth, (kept, growth)


def test_workers_run_with_malloc_on_huge_pages(server: Server) -> None:
    """The launcher gives `bentoml serve` GLIBC_TUNABLES with glibc.malloc.hugetlb=1 and its workers
    inherit it (service.cli.malloc_tunables: ORT's per-run buffer without ~1,000 page faults a run)."""
    pid = _worker_pid(server)
    environ = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
    assert b"glibc.malloc.hugetlb=1" in environ[b"GLIBC_TUNABLES"].split(b":")


def test_access_log_can_be_switched_off(server: Server) -> None:
    """ACCESS_LOG=false: served requests leave no access line (the line's format: test_service_http)."""
    with server.client() as c:
        assert _translate(server, c, png_bytes(32, 32)).status_code == 200
    time.sleep(1.0)
    log = server.log.read_text(errors="replace")
    assert "Service pocketgan initialized" in log  # the log is the server's
    assert "path=/translate" not in log
