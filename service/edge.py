"""The outermost ASGI layer of every worker: what is refused here never reaches BentoML.

It wraps BentoML's whole app (its per-path metrics, tracing, routing), so:

- **Request ids.** `X-Request-Id` from the request when it is 1-64 of `[A-Za-z0-9._:-]`, else a new
  one; echoed on every response, in every error body and in the log lines about the request.
- **One error shape.** Every response with status >= 400, whoever produced it (our handlers,
  FastAPI, Starlette, BentoML's probes), leaves as `{"error", "reason", "request_id"}`; 429/503 carry
  `Retry-After`; a 500 never carries exception text (that goes to the log with the request id).
- **Known paths only.** Unknown paths get 404 and wrong methods 405 with `Allow` here, so scanners
  add no per-path series to BentoML's `bentoml_service_request_*` metrics.
- **Slow clients.** A POST body must arrive completely within `body_timeout_s` (else 408 and the
  connection is closed); at most `max_uploads` bodies are being received per worker (else 503). Only
  a complete body takes one of the worker's processing slots (`max_concurrency / workers`, else 429),
  so stalled uploads cost a coroutine each, not a slot.
- **Deadline.** From the complete body, the app has `timeout_s` to start its response, else 504; the
  deadline is in `scope["state"]["deadline"]` (time.monotonic) so inference past it never starts.
  A slot is released only when the handler has really finished (a running ONNX call cannot be
  interrupted), so the slot count stays honest.
- **Access.** `/translate`, `/resolve` and `/schema.json` (what BentoML's clients read) need `Authorization: Bearer <key>` whose sha256 is in
  `api_key_hashes` (when any are set; 401 otherwise); `/metrics`, `/models` and the docs only answer
  peers in `internal_networks` that came directly, not through a proxy (when any are set; 403).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import time
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any, Awaitable, Callable

from service.settings import ServiceSettings

log = logging.getLogger("pocketgan.service")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_GET = frozenset({"GET", "HEAD"})
_POST = frozenset({"POST"})
# path -> (methods, kind); kind: protected (API keys), internal (cluster only), probe (always open)
ROUTES: dict[str, tuple[frozenset[str], str]] = {
    "/translate": (_POST, "protected"),
    "/resolve": (_POST, "protected"),
    "/models": (_GET, "internal"),
    "/metrics": (_GET, "internal"),
    "/docs.json": (_GET, "internal"),
    "/schema.json": (_GET, "protected"),  # BentoML's clients read their endpoints here
    "/": (_GET, "internal"),
    "/livez": (_GET, "probe"),
    "/healthz": (_GET, "probe"),
    "/readyz": (_GET, "probe"),
}
RESOLVE_BODY_LIMIT = 64 * 1024
_STATIC_PREFIX = "/static_content/"
# the reason an error gets when its producer did not give one (Starlette, BentoML)
DEFAULT_REASONS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    408: "body_timeout", 413: "body_too_large", 415: "unsupported_media_type", 422: "bad_parameter",
    429: "too_many_requests", 500: "internal_error", 503: "unavailable", 504: "timeout",
}
_MAX_ERROR_BODY = 64 * 1024


def request_id_of(scope: Scope) -> str:
    """The request's X-Request-Id when well-formed, else a fresh one."""
    for k, v in scope.get("headers", ()):
        if k == b"x-request-id":
            text = v.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


def hash_key(key: str) -> str:
    """What `api_key_hashes` holds for an API key: its sha256 hex digest."""
    return hashlib.sha256(key.encode()).hexdigest()


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


def _static_files() -> frozenset[str]:
    """BentoML's bundled UI assets (so /static_content/<random> is a 404 here, not a metric series)."""
    try:
        from bentoml._internal import server

        root = Path(server.__file__).parent / "static_content"
        return frozenset("/" + p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    except Exception:  # noqa: BLE001 - no UI assets: nothing static is served
        return frozenset()


class Responder:
    """The `send` the inner app gets: adds X-Request-Id, reshapes error bodies, drops sends after our own reply."""

    def __init__(self, send: Send, request_id: str, retry_after_s: int) -> None:
        self._send = send
        self.request_id = request_id
        self.retry_after = str(retry_after_s).encode()
        self.started = False
        self.finished = False
        self.status = 0
        self._held: tuple[int, list[tuple[bytes, bytes]], list[bytes], int] | None = None

    async def __call__(self, message: Message) -> None:
        if self.finished:
            return  # we already answered (504): the app's late reply goes nowhere
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            self.status = message["status"]
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
            headers.append((b"x-request-id", self.request_id.encode()))
            if self.status >= 400:
                self._held = (self.status, headers, [], 0)
                return
            await self._send({**message, "headers": headers})
            return
        if kind == "http.response.body" and self._held is not None:
            status, headers, parts, size = self._held
            chunk = message.get("body", b"")
            if size + len(chunk) <= _MAX_ERROR_BODY:
                parts.append(chunk)
            self._held = (status, headers, parts, size + len(chunk))
            if message.get("more_body"):
                return
            self._held = None
            await self._reshape(status, headers, b"".join(parts))
            return
        if kind == "http.response.body" and not message.get("more_body"):
            self.finished = True
        await self._send(message)

    async def _reshape(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        parsed: Any = None
        if b"json" in ctype:
            with contextlib.suppress(ValueError):
                parsed = json.loads(body)
        parsed = parsed if isinstance(parsed, dict) else {}
        message = parsed.get("error") or parsed.get("detail") or body.decode("utf-8", "replace").strip()
        reason = parsed.get("reason") if isinstance(parsed.get("reason"), str) else None
        if status >= 500 and status not in (503, 504):
            message, reason = "internal error", "internal_error"  # never exception text
        reason = reason or DEFAULT_REASONS.get(status, "http_error")
        if not isinstance(message, str) or not message:
            message = _phrase(status)
        keep = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length", b"retry-after")]
        await self._emit(status, reason, message.splitlines()[0][:300], keep)

    async def error(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None,
                    close: bool = False) -> None:
        """Answer now with the one error shape (the edge's own refusals)."""
        extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        if close:
            extra.append((b"connection", b"close"))
        extra.append((b"x-request-id", self.request_id.encode()))
        self.started = True
        self.status = status
        await self._emit(status, reason, message, extra)

    async def _emit(self, status: int, reason: str, message: str, headers: list[tuple[bytes, bytes]]) -> None:
        body = json.dumps({"error": message, "reason": reason, "request_id": self.request_id}).encode()
        headers = [*headers, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status in (429, 503):
            headers.append((b"retry-after", self.retry_after))
        self.finished = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


class Edge:
    """The ASGI wrapper (one per worker process). See the module docstring."""

    def __init__(self, app: Callable[..., Awaitable[None]], settings: ServiceSettings, *, max_concurrency: int,
                 timeout_s: float) -> None:
        self.app = app
        self.settings = settings
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.uploads = 0
        self.active = 0
        self._keys = tuple(settings.api_key_hashes)
        self._networks = [ipaddress.ip_network(n, strict=False) for n in settings.internal_networks]
        self._static = _static_files()
        self._metrics: Any = None

    # -- helpers ----------------------------------------------------------------------------------
    def _refused(self, reason: str) -> None:
        if self._metrics is None:
            from service.metrics import build_metrics

            self._metrics = build_metrics(self.settings.budget_buckets_s())
        self._metrics.edge_refusals.labels(reason).inc()

    def route(self, path: str) -> tuple[frozenset[str], str] | None:
        if path in ROUTES:
            return ROUTES[path]
        if path.startswith(_STATIC_PREFIX) and path[len(_STATIC_PREFIX) - 1:] in self._static:
            return _GET, "internal"
        return None

    def internal_ok(self, scope: Scope) -> bool:
        if not self._networks:
            return True
        if any(_header(scope, h) is not None for h in (b"x-forwarded-for", b"forwarded", b"x-real-ip")):
            return False  # came through a proxy (an ingress): not the cluster's own scraper
        client = scope.get("client")
        try:
            ip = ipaddress.ip_address(client[0]) if client else None
        except ValueError:
            return False
        return ip is not None and any(ip in n for n in self._networks)

    def key_ok(self, scope: Scope) -> bool:
        if not self._keys:
            return True
        auth = _header(scope, b"authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip() or len(token) > 512:
            return False
        digest = hash_key(token.strip())
        return any(hmac.compare_digest(digest, h) for h in self._keys)

    # -- the ASGI entry -------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        out = Responder(send, rid, self.settings.retry_after_s)
        try:
            await self._handle(scope, receive, out)
        except Exception:  # noqa: BLE001 - last line: log with the id, answer with no details
            log.exception("request %s: unexpected error on %s %s", rid, scope.get("method"), scope.get("path"))
            self._refused("internal_error")
            if not out.started:
                await out.error(500, "internal_error", "internal error")

    async def _handle(self, scope: Scope, receive: Receive, out: Responder) -> None:
        path, method = scope["path"], scope["method"]
        route = self.route(path)
        if route is None:
            self._refused("not_found")
            await out.error(404, "not_found", "no such path")
            return
        methods, kind = route
        if method not in methods:
            self._refused("method_not_allowed")
            await out.error(405, "method_not_allowed", f"{method[:16]} is not allowed here",
                            headers={"Allow": ", ".join(sorted(methods))})
            return
        if kind == "internal" and not self.internal_ok(scope):
            self._refused("forbidden")
            await out.error(403, "forbidden", "this path is served inside the cluster only")
            return
        if kind == "protected" and not self.key_ok(scope):
            self._refused("unauthorized")
            await out.error(401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>",
                            headers={"WWW-Authenticate": 'Bearer realm="pocketgan"'})
            return
        if method != "POST":
            await self.app(scope, receive, out)
            return
        limit = self.settings.max_body_bytes if path == "/translate" else RESOLVE_BODY_LIMIT
        body = await self._receive_body(scope, receive, out, limit)
        if body is None:
            return
        if self.active >= self.max_concurrency:
            self._refused("too_many_requests")
            await out.error(429, "too_many_requests", "this worker is at its concurrency limit; retry shortly")
            return
        self.active += 1
        try:
            await self._run(scope, _replay(body, receive), out)
        finally:
            self.active -= 1

    async def _receive_body(self, scope: Scope, receive: Receive, out: Responder, limit: int) -> bytes | None:
        """The whole body within body_timeout_s and `limit` bytes, or None after answering 408/413/503."""
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self._refused("body_too_large")
            await out.error(413, "body_too_large", f"body is {declared[:20]} bytes, limit {limit}", close=True)
            return None
        if self.uploads >= self.settings.max_uploads:
            self._refused("uploads_full")
            await out.error(503, "busy", "too many uploads in progress; retry shortly", close=True)
            return None
        self.uploads += 1
        chunks: list[bytes] = []
        total = 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    total += len(chunk)
                    if total > limit:
                        self._refused("body_too_large")
                        await out.error(413, "body_too_large", f"body exceeds {limit} bytes", close=True)
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            self._refused("body_timeout")
            log.info("request %s: body not complete after %g s (%d bytes): 408", out.request_id,
                     self.settings.body_timeout_s, total)
            await out.error(408, "body_timeout", f"the body did not arrive within {self.settings.body_timeout_s:g} s",
                            close=True)
            return None
        finally:
            self.uploads -= 1
        return b"".join(chunks)

    async def _run(self, scope: Scope, receive: Receive, out: Responder) -> None:
        """The app with a deadline on its response start; waits for it to really end before returning."""
        scope["state"]["deadline"] = time.monotonic() + self.timeout_s
        task = asyncio.ensure_future(self.app(scope, receive, out))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
            if task in done:
                task.result()
                return
            if not out.started:
                self._refused("timeout")
                log.warning("request %s: no response within %g s: 504", out.request_id, self.timeout_s)
                await out.error(504, "timeout", f"not processed within {self.timeout_s:g} s", close=True)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # a running inference cannot be interrupted: the slot stays taken until it ends
        finally:
            if not task.done():
                task.cancel()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the already-read body, then passes through (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
