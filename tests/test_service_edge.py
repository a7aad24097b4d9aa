"""service.edge.Edge driven directly over ASGI (fast, deterministic): the cases a real server cannot
produce on demand (an app that hangs past the deadline, an app that crashes) plus the access rules.
The same behaviours are checked end to end against `bentoml serve` in test_service_abuse.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from service.edge import Edge, hash_key, request_id_of
from service.metrics import filter_exposition
from service.settings import ServiceSettings


def _settings(**kw: Any) -> ServiceSettings:
    base = dict(body_timeout_s=0.3, max_uploads=2, max_body_bytes=4096, retry_after_s=3)
    base.update(kw)
    return ServiceSettings(**base)


class Inner:
    """A stand-in for BentoML's app: answers by path, records what reached it."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.hold = hold
        self.finished = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        body = b""
        if scope["method"] == "POST":
            while True:
                m = await receive()
                body += m.get("body", b"")
                if not m.get("more_body"):
                    break
        self.seen.append((scope["path"], body))
        try:
            if scope["path"] == "/readyz":
                await _plain(send, 503, b"Service is not ready")
            elif scope["path"] == "/models":
                raise RuntimeError("secret detail s3://bucket at http://10.0.0.1:8333")
            elif self.hold is not None:
                while not self.hold.is_set():  # like an ONNX call in a thread: cancellation cannot interrupt it
                    try:
                        await self.hold.wait()
                    except asyncio.CancelledError:
                        continue
                await _plain(send, 200, b"late")
            else:
                await _plain(send, 200, b"ok:" + body)
        finally:
            self.finished += 1


async def _plain(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def _scope(method: str, path: str, headers: dict[str, str] | None = None, client: str = "127.0.0.1") -> dict:
    hs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http", "method": method, "path": path, "headers": hs, "client": (client, 5555)}


async def _call(edge: Edge, scope: dict, chunks: list[bytes] | None = None, stall: bool = False,
                sent: list[dict] | None = None) -> tuple[int, dict, bytes]:
    queue = list(chunks or [b""])
    sent = [] if sent is None else sent

    async def receive() -> dict:
        if queue:
            c = queue.pop(0)
            more = bool(queue) or stall
            return {"type": "http.request", "body": c, "more_body": more}
        await asyncio.sleep(3600)  # a client that stopped sending
        return {"type": "http.disconnect"}

    async def send(m: dict) -> None:
        sent.append(m)

    await edge(scope, receive, send)
    return _parsed(sent)


def _parsed(sent: list[dict]) -> tuple[int, dict, bytes]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, body


def _err(status: int, headers: dict, body: bytes, want_status: int, reason: str) -> dict:
    assert status == want_status, (status, body)
    doc = json.loads(body)
    assert set(doc) == {"error", "reason", "request_id"} and doc["reason"] == reason, doc
    assert headers["x-request-id"] == doc["request_id"]
    if status in (429, 503):
        assert headers["retry-after"] == "3"
    return doc


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_request_id_taken_when_valid_else_generated() -> None:
    assert request_id_of(_scope("GET", "/", {"X-Request-Id": "abc-123.x:y"})) == "abc-123.x:y"
    for bad in ("x" * 65, "a b", "<script>", ""):
        rid = request_id_of(_scope("GET", "/", {"X-Request-Id": bad}))
        assert rid != bad and len(rid) == 32


def test_unknown_path_and_wrong_method_never_reach_the_app() -> None:
    inner = Inner()
    edge = Edge(inner, _settings(), max_concurrency=2, timeout_s=5)
    doc = _err(*run(_call(edge, _scope("GET", "/wp-admin/x.php", {"X-Request-Id": "rid1"}))), 404, "not_found")
    assert doc["request_id"] == "rid1"
    status, headers, body = run(_call(edge, _scope("GET", "/translate")))
    _err(status, headers, body, 405, "method_not_allowed")
    assert headers["allow"] == "POST"
    status, headers, body = run(_call(edge, _scope("DELETE", "/models")))
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert run(_call(edge, _scope("GET", "/static_content/nope.js")))[0] == 404
    assert inner.seen == []


def test_app_errors_are_reshaped_and_500_carries_no_details() -> None:
    edge = Edge(Inner(), _settings(), max_concurrency=2, timeout_s=5)
    doc = _err(*run(_call(edge, _scope("GET", "/readyz"))), 503, "unavailable")
    assert doc["error"] == "Service is not ready"
    doc = _err(*run(_call(edge, _scope("GET", "/models"))), 500, "internal_error")
    assert doc["error"] == "internal error" and "10.0.0.1" not in json.dumps(doc)
    status, headers, body = run(_call(edge, _scope("POST", "/translate"), [b"abc", b"def"]))
    assert status == 200 and body == b"ok:abcdef" and len(headers["x-request-id"]) == 32


def test_body_deadline_408_closes_and_frees_the_upload_slot() -> None:
    inner = Inner()
    edge = Edge(inner, _settings(), max_concurrency=2, timeout_s=5)
    status, headers, body = run(_call(edge, _scope("POST", "/translate"), [b"partial"], stall=True))
    _err(status, headers, body, 408, "body_timeout")
    assert headers["connection"] == "close"
    assert edge.uploads == 0 and inner.seen == []


def test_upload_cap_and_declared_size() -> None:
    inner = Inner()
    edge = Edge(inner, _settings(), max_concurrency=8, timeout_s=5)

    async def scenario() -> tuple:
        stalled = [asyncio.create_task(_call(edge, _scope("POST", "/translate"), [b"x"], stall=True)) for _ in range(2)]
        await asyncio.sleep(0.05)
        refused = await _call(edge, _scope("POST", "/translate"), [b"y"])
        probe = await _call(edge, _scope("GET", "/livez"))
        return refused, probe, await asyncio.gather(*stalled)

    refused, probe, stalled = run(scenario())
    _err(*refused, 503, "busy")
    assert probe[0] == 200  # probes never wait behind uploads
    assert [s[0] for s in stalled] == [408, 408]
    _err(*run(_call(edge, _scope("POST", "/resolve", {"Content-Length": str(10**6)}))), 413, "body_too_large")
    _err(*run(_call(edge, _scope("POST", "/translate"), [b"z" * 5000])), 413, "body_too_large")


def test_slots_are_taken_after_the_body_and_held_until_the_app_ends() -> None:
    async def scenario() -> tuple:
        gate = asyncio.Event()
        inner = Inner(hold=gate)
        edge = Edge(inner, _settings(), max_concurrency=1, timeout_s=0.3)
        stalled = asyncio.create_task(_call(edge, _scope("POST", "/translate"), [b"s"], stall=True))
        await asyncio.sleep(0.05)
        assert edge.active == 0  # an incomplete body holds no slot ...
        sent: list[dict] = []
        first = asyncio.create_task(_call(edge, _scope("POST", "/translate"), [b"a"], sent=sent))
        await asyncio.sleep(0.05)
        busy = await _call(edge, _scope("POST", "/translate"), [b"b"])  # ... a complete one does
        await asyncio.sleep(0.5)  # past the deadline: 504 sent while the app still runs
        timed_out, held_after_504 = _parsed(sent), edge.active
        gate.set()
        await asyncio.wait_for(first, 5)
        await stalled
        return busy, timed_out, held_after_504, edge.active, inner.finished

    busy, timed_out, held_after_504, after, finished = run(scenario())
    _err(*busy, 429, "too_many_requests")
    _err(*timed_out, 504, "timeout")
    assert held_after_504 == 1 and finished == 1 and after == 0


def test_api_keys_and_internal_networks() -> None:
    key = "s3cret-key"
    edge = Edge(Inner(), _settings(api_key_hashes=[hash_key(key)], internal_networks=["127.0.0.0/8"]),
                max_concurrency=2, timeout_s=5)
    status, headers, body = run(_call(edge, _scope("POST", "/translate"), [b"x"]))
    _err(status, headers, body, 401, "unauthorized")
    assert headers["www-authenticate"].startswith("Bearer")
    _err(*run(_call(edge, _scope("POST", "/resolve", {"Authorization": "Bearer wrong"}), [b"x"])), 401, "unauthorized")
    assert run(_call(edge, _scope("POST", "/translate", {"Authorization": f"Bearer {key}"}), [b"x"]))[0] == 200
    assert run(_call(edge, _scope("GET", "/livez", client="203.0.113.9")))[0] == 200
    _err(*run(_call(edge, _scope("GET", "/metrics", client="203.0.113.9"))), 403, "forbidden")
    _err(*run(_call(edge, _scope("GET", "/metrics", {"X-Forwarded-For": "1.2.3.4"}))), 403, "forbidden")
    assert run(_call(edge, _scope("GET", "/docs.json")))[0] == 200


def test_settings_refuse_plain_keys_and_bad_networks() -> None:
    with pytest.raises(ValueError):
        ServiceSettings(api_key_hashes=["my-plain-key"])
    with pytest.raises(ValueError):
        ServiceSettings(internal_networks=["10.0.0.0/33"])
    s = ServiceSettings(api_key_hashes=f"{hash_key('a')}, {hash_key('b')}".upper())  # comma separated, any case
    assert s.api_key_hashes == [hash_key("a"), hash_key("b")]


def test_filter_exposition_drops_retired_artifacts_and_non_routes() -> None:
    text = "\n".join([
        "# HELP pocketgan_selections_total x",
        'pocketgan_selections_total{task="t",artifact="live"} 2.0',
        'pocketgan_selections_total{task="t",artifact="retired"} 5.0',
        'pocketgan_model_swaps_total{task="t"} 3.0',
        'bentoml_service_request_total{endpoint="/translate",http_response_code="200"} 1.0',
        'bentoml_service_request_total{endpoint="/random-123",http_response_code="404"} 1.0',
    ])
    out = filter_exposition(text, {"t": {"live"}}, ["/translate"])
    assert "live" in out and "retired" not in out and "random-123" not in out and "swaps_total" in out


def test_inference_never_starts_past_the_deadline(tmp_path) -> None:
    """The handler's worker-thread job checks the edge's deadline after preprocessing, before the ONNX call."""
    import time
    from types import SimpleNamespace

    from conftest import build_tiny_onnx
    from _service_helpers import png_bytes
    from registry.runtime import OnnxGenerator
    from service.images import decode_image
    from service.metrics import build_metrics
    from service.pool import LoadedArtifact
    from service.service import DeadlineExceeded, PocketGAN

    svc = object.__new__(PocketGAN.inner)  # the handler's own code, without a server around it
    svc.settings = ServiceSettings()
    svc.metrics = build_metrics(svc.settings.budget_buckets_s())
    gen = OnnxGenerator(build_tiny_onnx(tmp_path / "m.onnx"), intra_op_threads=1)
    runs: list[int] = []
    real_run = gen.run
    gen.run = lambda x: runs.append(1) or real_run(x)  # type: ignore[method-assign]  # count ONNX calls
    art = LoadedArtifact(SimpleNamespace(artifact_id="a"), gen, tmp_path)  # type: ignore[arg-type]
    decoded = decode_image(png_bytes(32, 32), max_pixels=svc.settings.max_pixels)
    with pytest.raises(DeadlineExceeded):
        svc._run(art, decoded, "png", "facades-label2photo", time.monotonic() - 0.001)
    assert runs == []
    body, ctype, tensor_hw, infer_s = svc._run(art, decoded, "png", "facades-label2photo", time.monotonic() + 60)
    assert runs == [1] and ctype == "image/png" and tensor_hw == (32, 32) and infer_s > 0


def test_bytes_per_pixel_prefers_this_hardware_then_any_profile_then_default() -> None:
    from registry.manifest import HardwareProfile, LatencyMeasurement
    from service.service import MemoryBudget, bytes_per_pixel

    def prof(tag: str, *bpps: float | None) -> HardwareProfile:
        return HardwareProfile(hardware_tag=tag, runtime_version="1", measurements=[
            LatencyMeasurement(height=8, width=8, runs=1, p50_ms=1, p95_ms=1, p99_ms=1, throughput_ips=1,
                               peak_bytes_per_pixel=b) for b in bpps])

    from types import SimpleNamespace

    def manifest(*profiles: HardwareProfile) -> SimpleNamespace:
        return SimpleNamespace(profiles=list(profiles),
                               profile=lambda tag: next((p for p in profiles if p.hardware_tag == tag), None))

    assert bytes_per_pixel(manifest(prof("here", 100.0, 300.0), prof("other", 900.0)), "here", 2048) == 300.0
    assert bytes_per_pixel(manifest(prof("here", None), prof("other", 900.0, 500.0)), "here", 2048) == 900.0
    assert bytes_per_pixel(manifest(prof("other", None)), "here", 2048) == 2048
    budget = MemoryBudget(100)
    assert budget.try_take(60) and not budget.try_take(50) and budget.try_take(40)
    budget.give(60)
    assert budget.used == 40
