"""pocketgan's BentoML service: image translation with per-request model selection.

Read top to bottom: configuration -> the HTTP app -> the service class (pool start-up, readiness)
-> the three routes (`/translate`, `/resolve`, `/models`).

Why a mounted FastAPI app instead of `@bentoml.api` typed inputs: hostile input must give an
exact one-line JSON 4xx (`{"error", "reason"}`) *before* anything big is parsed. With a raw
`Request` we check the content type, the Content-Length and the streamed byte count against
`max_body_bytes` before multipart parsing, then sniff the image bytes ourselves. BentoML still
provides everything around it: `/readyz` (via `__is_ready__`), `/livez`, `/metrics` (multi-worker
aggregation, filtered by `__metrics__`). BentoML's HTTP clients (`bentoml.SyncHTTPClient(url).translate(...)`)
find the two routes in `/schema.json`, which lists them (`service.openapi.client_routes`); `/docs.json`
is our own OpenAPI document with the deployment's constraints (`service.openapi.openapi_document`).
Workers and BentoML's backstop timeout come from the settings when serving starts (`serve_config`).
`POST /translate`, the route that carries the load, skips the layers it does not need: `TranslateFastPath`
sits inside BentoML's request metrics (and tracing, when on) and calls the route function directly, past
BentoML's timeout and request context and Starlette's and FastAPI's routing (README "Service performance").
Traffic control is ours, not BentoML's: `service.edge.Edge` wraps BentoML's whole ASGI app in
every worker (request ids, one error shape, body deadline, upload/concurrency caps, API keys,
internal-only routes, the request deadline); BentoML's own timeout stays only as a backstop.

Admission by cost (`/translate`): the image header gives the size before anything is decoded;
a side below the model's recorded minimum (its contract) is sized up to it and the output back; the
chosen artifact's cost is pixels x (its profiled peak bytes/pixel + the service's own bytes/pixel);
a cost above the worker's memory budget is 413 `too_many_pixels` (it could never fit), a cost
that does not fit next to the requests in flight is 503 `busy` with Retry-After. Images above
`large_pixels` run in their own lane (`large_inference_threads`), so a few huge images cannot take
every inference thread from ordinary ones.

`POST /translate` response headers (the body is the translated image):

| header | meaning |
|---|---|
| `X-Pocketgan-Artifact` | artifact id that ran |
| `X-Pocketgan-Expected-Ms` | expected p95 latency at this size (profile, corrected by observation); `none` if unprofiled |
| `X-Pocketgan-Actual-Ms` | server-side time from the fully received body to the encoded response |
| `X-Pocketgan-Budget-Ms` | the budget used (the field, or the device class default) |
| `X-Pocketgan-Budget-Met` | `true` / `false`: actual <= budget |
| `X-Pocketgan-No-Eligible` | `true` when no promoted artifact was expected to meet the budget (fastest served) |
| `X-Pocketgan-Hardware-Tag` | the hardware tag whose profiles were used |
| `X-Request-Id` | on every response (also errors): the request's own when valid, else generated |
| `X-Pocketgan-Policy` | the device class's selection policy (`smallest` / `best-quality`) |
| `X-Pocketgan-Fallback-From` | only when the first artifact failed at run time: its id (the request was retried once) |
| `X-Pocketgan-Probe` | `true` when the artifact was re-probed after its own observed latency had excluded it |
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import time
from typing import Any

import anyio
import bentoml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware

from registry.errors import RegistryError
from registry.manifest import Manifest
from registry.runtime import target_size, tensor_to_image
from service.cli import huge_page_malloc_warning
from service.edge import ROUTES, Edge
from service.images import Decoded, ImageRejected, Probed, decode_image, encode_image, probe_image
from service.lanes import Lane, LaneClosed
from service.metrics import Metrics, build_metrics, filter_exposition
from service.openapi import OUTPUT_FORMATS, OpenAPIDocument, client_routes, openapi_document, register_yaml
from service.pool import LoadedArtifact, ModelPool, candidate_for, summarize
from service.schemas import (
    CandidateOut,
    ErrorBody,
    LoadedArtifactOut,
    ModelsResponse,
    ObservedOut,
    ResolveRequest,
    ResolveResponse,
    TaskModelsOut,
)
from service.selection import SelectionRequest, select
from service.settings import ServiceSettings, malloc_tunables_in_effect

log = logging.getLogger("pocketgan.service")
if not log.handlers:
    _h = logging.StreamHandler(sys.stderr)
    _h.setFormatter(logging.Formatter("%(asctime)s pocketgan[%(process)d] %(levelname)s %(message)s"))
    log.addHandler(_h)
    log.setLevel(logging.INFO)
    log.propagate = False

app = FastAPI(
    title="pocketgan",
    description="Image-to-image translation; picks the smallest promoted generator that meets the budget.",
    version="1",
)


async def _service_instance() -> Any:
    """BentoML binds `self` of the routes below with `Depends(bentoml.get_current_service)`, a plain
    function, which FastAPI calls in a worker thread: a thread hop per request to read a global."""
    return bentoml.get_current_service()


app.dependency_overrides[bentoml.get_current_service] = _service_instance


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 408, 413, 415, 429, 500, 503, 504)
}
BACKSTOP_S = 30.0  # BentoML's own timeout = TIMEOUT_S + this: only for what the edge does not time (GETs)
RESOURCES = {"cpu": "2", "memory": "2Gi"}  # what one replica is sized for (deploy/k8s/deployment.yaml limits)
_LIVE: dict[str, ServiceSettings] = {}  # this worker's settings once serving (the API description uses them)


def form_value(raw: str | None) -> str | None:
    """A multipart field as plain text. BentoML's HTTP clients JSON-encode every non-file field
    (`"facades"`, `null`); curl sends it raw. A JSON string is unquoted, JSON null is absent."""
    if raw is None:
        return None
    text = raw.strip()
    if text == "null":
        return None
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return raw
        return value if isinstance(value, str) else raw
    return raw


def _error(status: int, reason: str, message: str) -> JSONResponse:
    """The error body (the edge adds request_id and Retry-After to every one)."""
    return JSONResponse({"error": message, "reason": reason}, status_code=status)


def _rid(request: Request) -> str:
    return getattr(request.state, "request_id", "-")


def _error_kind(text: str | None) -> str | None:
    """"load of revision 3: IntegrityError: sha256 of s3://... differs" -> "load of revision 3: IntegrityError":
    what failed and how, without endpoints, keys or paths (those are in the log)."""
    if not text:
        return None
    return ":".join(text.split(":")[:2]).strip()


def _no_servable_model(task: str) -> ImageRejected:
    """Nothing in the task's set can serve now (all ejected, or the first and the fallback failed): 503, not 500."""
    return ImageRejected(503, "no_servable_model", f"no servable model for {task} right now; retry shortly")


class DeadlineExceeded(Exception):
    """The request's deadline passed before inference could start."""


class MemoryBudget:
    """Bytes one worker admits for requests in flight (event loop only: no lock needed)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def try_take(self, cost: int) -> bool:
        if self.used + cost > self.capacity:
            return False
        self.used += cost
        return True

    def give(self, cost: int) -> None:
        self.used = max(0, self.used - cost)


def bytes_per_pixel(manifest: Manifest, hardware_tag: str, default: float) -> float:
    """The artifact's measured ONNX Runtime peak bytes per input pixel: its profile for this hardware tag,
    else the largest any profile recorded, else `default`."""
    mine = manifest.profile(hardware_tag)
    for profiles in ([mine] if mine else [], manifest.profiles):
        values = [m.peak_bytes_per_pixel for p in profiles for m in p.measurements if m.peak_bytes_per_pixel]
        if values:
            return max(values)
    return default


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
    svc = bentoml.get_current_service()
    if svc is not None:
        svc.metrics.rejections.labels("bad_parameter").inc()
    return _error(400, "bad_parameter", f"{loc}: {first.get('msg', 'invalid')}")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, "http_error", str(exc.detail).splitlines()[0][:200])


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: the details go to the log under the request id, the client gets none."""
    log.exception("request %s: unexpected error on %s", _rid(request), request.url.path)
    return _error(500, "internal_error", "internal error")


@bentoml.service(name="pocketgan", resources=RESOURCES)  # workers and timeout: serve time (serve_config)
@bentoml.asgi_app(app, path="/")
class PocketGAN:
    """One instance per worker: settings, metrics, the model pool and its polling task."""

    def __init__(self) -> None:
        self.settings = ServiceSettings()
        self.hardware_tag = self.settings.resolved_hardware_tag()
        self.metrics: Metrics = build_metrics(self.settings.budget_buckets_s())
        self.metrics.init_labels(self.settings.tasks, list(self.settings.device_classes))
        self.metrics.set_budgets(self.settings.device_classes)
        self.pool = ModelPool(self.settings, self.metrics, self.hardware_tag)
        self.lane = Lane(self.settings.inference_threads, "inference")
        self.large_lane = Lane(self.settings.large_inference_threads, "large")
        self.memory = MemoryBudget(self.settings.worker_memory_budget(self.settings.workers))
        _LIVE["settings"] = self.settings
        self.metrics.memory_budget.set(self.memory.capacity)
        self._pool_task: asyncio.Task[None] | None = None
        self._resolve_cache: dict[str, tuple[float, list[Manifest]]] = {}
        log.info("hardware tag %s; tasks %s; channel %s", self.hardware_tag, self.settings.tasks, self.settings.channel)
        if warning := huge_page_malloc_warning(malloc_tunables_in_effect()):
            log.warning(warning)

    @bentoml.on_startup
    async def start_pool(self) -> None:
        """Start loading and polling in the background; /readyz stays 503 until every task is loaded."""
        self._pool_task = asyncio.create_task(self.pool.run_forever(), name="pocketgan-pool")

    @bentoml.on_shutdown
    async def stop_pool(self) -> None:
        self.pool.stop()
        self.lane.shutdown()
        self.large_lane.shutdown()
        if self._pool_task is not None:
            self._pool_task.cancel()

    def __is_ready__(self) -> bool:
        return self.pool.ready()

    def __is_alive__(self) -> bool:
        """Alive while the pool loop runs (a crashed loop would never load a new set again: restart us)."""
        return self._pool_task is None or not self._pool_task.done() or self._pool_task.cancelled()

    def __metrics__(self, text: str) -> str:
        """Series of artifacts that left the promoted set and of non-routes are not exposed."""
        keep = {
            task: set(st.promoted) | set(st.current.artifact_ids if st.current else ())
            for task, st in self.pool.states.items()
        }
        return filter_exposition(text, keep, ROUTES)

    # -- helpers ------------------------------------------------------------------------------
    def _reject(self, r: ImageRejected) -> JSONResponse:
        self.metrics.rejections.labels(r.reason).inc()
        return _error(r.status, r.reason, str(r))

    async def _read_form(self, request: Request) -> tuple[dict[str, str], bytes]:
        """Content type, body size (declared and streamed) and multipart checks, in that order."""
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise ImageRejected(415, "wrong_content_type", f"expected multipart/form-data, got {ctype or 'nothing'}")
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ImageRejected(413, "body_too_large", f"body is {declared} bytes, limit {limit}")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ImageRejected(413, "body_too_large", f"body exceeds {limit} bytes")
            chunks.append(chunk)
        request._body = b"".join(chunks)  # Starlette re-reads the cached body when parsing the form
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as exc:  # noqa: BLE001 - MultiPartException / HTTPException(400)
            detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
            raise ImageRejected(400, "bad_form", f"malformed multipart body: {str(detail).splitlines()[0]}") from exc
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise ImageRejected(400, "missing_image", "multipart field 'image' (a file) is required")
        data = await image.read()
        fields = {k: v for k, v in ((k, form_value(v)) for k, v in form.items() if isinstance(v, str)) if v is not None}
        await form.close()
        return fields, data

    def _budget(self, raw: str | float | None, device_class: str) -> float:
        if raw is None:  # absent: the device class's default ("" is not a number: refused below)
            return self.settings.device_classes[device_class]
        try:
            budget = float(raw)
        except (TypeError, ValueError):
            raise ImageRejected(400, "budget_out_of_range", f"latency_budget_ms must be a number, got {str(raw)[:32]!r}")
        lo, hi = self.settings.min_budget_ms, self.settings.max_budget_ms
        if not math.isfinite(budget) or not lo <= budget <= hi:
            raise ImageRejected(400, "budget_out_of_range", f"latency_budget_ms must be in [{lo:g}, {hi:g}], got {str(raw)[:32]}")
        return budget

    def _check_task(self, task: str | None) -> str:
        if not task:
            raise ImageRejected(400, "bad_parameter", "field 'task' is required")
        if task not in self.settings.tasks:
            raise ImageRejected(400, "unknown_task", f"unknown task {task[:64]!r}; served: {', '.join(self.settings.tasks)}")
        return task

    def _run(self, art: LoadedArtifact, decoded: Decoded, fmt: str, task: str,
             deadline: float) -> tuple[bytes, str, tuple[int, int], float]:
        """Preprocess, infer, postprocess, encode: blocking, runs in a worker thread. `decoded` stays
        intact (a fallback runs on it again). Returns (body, content type, tensor (H, W), inference s)."""
        m, gen = self.metrics, art.generator
        t0 = time.perf_counter()
        x, _ = gen.prepare(decoded.image, max_side=self.settings.max_side)
        size = decoded.output_size  # the upload's size, also when the JPEG was decoded at a reduced scale
        if time.monotonic() > deadline:
            raise DeadlineExceeded
        t1 = time.perf_counter()
        y = gen.run(x)
        t2 = time.perf_counter()
        tensor_hw = (x.shape[2], x.shape[3])
        del x
        out = tensor_to_image(y, size=size)
        del y
        t3 = time.perf_counter()
        body, ctype = encode_image(out, fmt, jpeg_quality=self.settings.jpeg_quality)
        t4 = time.perf_counter()
        m.processing_duration.labels(task, "preprocess").observe(t1 - t0)
        m.inference_duration.labels(task, art.manifest.artifact_id).observe(t2 - t1)
        m.processing_duration.labels(task, "postprocess").observe(t3 - t2)
        m.processing_duration.labels(task, "encode").observe(t4 - t3)
        return body, ctype, tensor_hw, t2 - t1

    def _cost(self, art: LoadedArtifact, w: int, h: int) -> int:
        """Estimated peak bytes of one request: pixels x (artifact's bytes/pixel + the service's own)."""
        g = art.generator
        tw, th = target_size(w, h, g.size_multiple, self.settings.max_side, min_side=g.min_side)
        pixels = max(w * h, tw * th)
        bpp = bytes_per_pixel(art.manifest, self.hardware_tag, self.settings.default_bytes_per_pixel)
        return int(pixels * (bpp + self.settings.service_bytes_per_pixel))

    def _admit(self, cost: int, w: int, h: int) -> None:
        """413 when the cost could never fit this worker's budget, 503 busy when it does not fit now."""
        mib = 1024 * 1024
        if cost > self.memory.capacity:
            self.metrics.admission.labels("too_large").inc()
            raise ImageRejected(
                413, "too_many_pixels",
                f"a {w}x{h} image needs ~{cost // mib} MiB here; a worker admits at most {self.memory.capacity // mib} MiB",
            )
        if not self.memory.try_take(cost):
            self.metrics.admission.labels("busy").inc()
            raise ImageRejected(503, "busy", "not enough memory free for this image right now; retry shortly")
        self.metrics.admission.labels("admitted").inc()
        self.metrics.admitted_bytes.set(self.memory.used)

    # -- routes -------------------------------------------------------------------------------
    @app.post("/translate", responses=_ERRORS, response_class=Response)  # its form: service.openapi
    async def translate(self, request: Request) -> Response:
        """Translate one image with the smallest promoted generator expected to meet the budget."""
        deadline = getattr(request.state, "deadline", None) or time.monotonic() + self.settings.timeout_s
        try:
            fields, data = await self._read_form(request)
            started = time.perf_counter()
            task = self._check_task(fields.get("task"))
            device_class = self.settings.device_class_or_default(fields.get("device_class"))
            if device_class not in self.settings.device_classes:
                raise ImageRejected(
                    400, "unknown_device_class",
                    f"unknown device class {device_class[:64]!r}; known: {', '.join(self.settings.device_classes)} "
                    "(omit the field for the default)",
                )
            budget = self._budget(fields.get("latency_budget_ms"), device_class)
            out_fmt = fields.get("output_format") or None
            if out_fmt is not None and out_fmt not in OUTPUT_FORMATS:
                raise ImageRejected(400, "bad_parameter", f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {out_fmt[:16]!r}")
            mset = self.pool.snapshot(task)  # held for the whole request: a swap does not affect it
            if mset is None:
                return _error(503, "not_ready", f"no model loaded for {task} yet")
            probed: Probed = probe_image(data, max_pixels=self.settings.max_pixels)  # header only: cheap
            w, h = probed.width, probed.height
            decision = self.pool.decide(mset, task, device_class, budget, h, w)
            if decision is None:
                raise _no_servable_model(task)
            # admitted at the chosen artifact's cost; a fallback (rare: a model failed) runs within it
            cost = self._cost(mset.artifacts[decision.artifact_id], w, h)
            self._admit(cost, w, h)
        except ImageRejected as r:
            return self._reject(r)
        lane = self.large_lane if w * h > self.settings.large_pixels else self.lane
        fmt = out_fmt or probed.format.lower()
        decoded: list[Decoded] = []  # decoded once, in the first job; a fallback reuses it

        def job(art: LoadedArtifact) -> tuple[bytes, str, tuple[int, int], float]:
            """One worker-thread hop per attempt: decode (first attempt only), then `_run`."""
            if not decoded:
                if time.monotonic() > deadline:
                    raise DeadlineExceeded
                t0 = time.perf_counter()
                decoded.append(decode_image(data, max_pixels=self.settings.max_pixels, max_side=self.settings.max_side))
                self.metrics.processing_duration.labels(task, "decode").observe(time.perf_counter() - t0)
            return self._run(art, decoded[0], fmt, task, deadline)

        try:
            # a model that raises is retried once on another (service.pool); never a 500 for a model's fault;
            # a rejected image (ImageRejected from decoding) is the client's fault, not the model's: passed through
            served = await self.pool.run_with_fallback(
                mset, task, device_class, budget, h, w,
                lambda art: lane.run(job, art),
                first=decision, passthrough=(DeadlineExceeded, ImageRejected, LaneClosed),
            )
        except ImageRejected as r:
            return self._reject(r)
        except DeadlineExceeded:
            self.metrics.edge_refusals.labels("timeout").inc()
            return _error(504, "timeout", f"not started within {self.settings.timeout_s:g} s")
        except LaneClosed:  # the worker is stopping (uvicorn drains first, so this is a race): not the model's fault
            return _error(503, "not_ready", "this worker is shutting down; retry shortly")
        except Exception:  # noqa: BLE001 - our fault, never the client's: details to the log only
            log.exception("request %s: translate failed", _rid(request))
            return _error(500, "internal_error", "internal error")
        finally:
            self.memory.give(cost)
            self.metrics.admitted_bytes.set(self.memory.used)
        if served is None:
            return self._reject(_no_servable_model(task))
        decision, failed = served.decision, served.failed_from
        body, ctype, (th, tw), infer_s = served.result
        self.pool.observe(mset, decision.artifact_id, th, tw, infer_s * 1000.0, probe=decision.probe)
        self.metrics.policy_selections.labels(task, device_class, decision.policy).inc()
        actual_ms = (time.perf_counter() - started) * 1000.0
        met = actual_ms <= budget
        m = self.metrics
        m.request_duration.labels(task, device_class, decision.artifact_id).observe(actual_ms / 1000.0)
        if decision.expected_ms is not None:
            m.expected_duration.labels(task, device_class, decision.artifact_id).observe(decision.expected_ms / 1000.0)
        m.budget.labels(task, device_class, "met" if met else "missed").inc()
        m.selections.labels(task, decision.artifact_id).inc()
        if decision.no_eligible:
            m.no_eligible.labels(task, device_class).inc()
        headers = {
            "X-Pocketgan-Artifact": decision.artifact_id,
            "X-Pocketgan-Expected-Ms": f"{decision.expected_ms:.2f}" if decision.expected_ms is not None else "none",
            "X-Pocketgan-Actual-Ms": f"{actual_ms:.2f}",
            "X-Pocketgan-Budget-Ms": f"{budget:g}",
            "X-Pocketgan-Budget-Met": "true" if met else "false",
            "X-Pocketgan-No-Eligible": "true" if decision.no_eligible else "false",
            "X-Pocketgan-Hardware-Tag": self.hardware_tag,
            "X-Pocketgan-Policy": decision.policy,
        }
        if failed is not None:
            headers["X-Pocketgan-Fallback-From"] = failed
        if decision.probe:
            headers["X-Pocketgan-Probe"] = "true"
        return Response(content=body, media_type=ctype, headers=headers)

    @app.post("/resolve", response_model=ResolveResponse, responses=_ERRORS)
    async def resolve(self, body: ResolveRequest) -> Any:
        """For on-device inference: the artifact for the client's hardware tag and budget, with a presigned URL."""
        try:
            task = self._check_task(body.task)
            lo, hi = self.settings.min_budget_ms, self.settings.max_budget_ms
            if not math.isfinite(body.latency_budget_ms) or not lo <= body.latency_budget_ms <= hi:
                raise ImageRejected(400, "budget_out_of_range", f"latency_budget_ms must be in [{lo:g}, {hi:g}]")
            from registry.names import validate_name

            try:
                tag = validate_name(body.hardware_tag, "hardware tag")
            except Exception as exc:  # noqa: BLE001
                raise ImageRejected(400, "bad_parameter", str(exc).splitlines()[0]) from exc
        except ImageRejected as r:
            return self._reject(r)
        manifests = await self._manifests_for_resolve(task)
        if not manifests:
            return _error(503, "not_ready", f"no promoted set known for {task} yet")
        manifests = [m for m in manifests if m.format_file(body.format) is not None]
        if not manifests:
            return self._reject(ImageRejected(
                404, "format_unavailable", f"no promoted artifact of {task} is published as {body.format}; try onnx"))
        req = SelectionRequest(task=task, hardware_tag=tag, budget_ms=body.latency_budget_ms, height=body.height, width=body.width)
        decision = select([candidate_for(m, tag) for m in manifests], {}, req)  # client hardware: no server observations
        chosen = next(m for m in manifests if m.artifact_id == decision.artifact_id)
        summary = summarize(chosen)
        file = chosen.format_file(body.format)
        assert file is not None  # filtered above
        expires = self.settings.presign_expires_s
        try:
            url = await anyio.to_thread.run_sync(
                lambda: self.pool.registry().presign(chosen.artifact_id, path=file.path, task=task, expires_s=expires)
            )
        except RegistryError as exc:
            log.warning("cannot presign %s: %s", chosen.artifact_id, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return _error(503, "registry_unavailable", "the model URL cannot be signed right now; retry shortly")
        return ResolveResponse(
            task=task, hardware_tag=tag, latency_budget_ms=body.latency_budget_ms, artifact=summary, url=url,
            url_expires_s=expires, format=body.format, path=file.path, sha256=file.sha256, bytes=file.bytes,
            written_by=next((v.runtime_version for v in chosen.variants if v.format == body.format), None),
            expected_ms=decision.expected_ms,
            budget_met=not decision.no_eligible, no_eligible=decision.no_eligible, reasons=decision.reasons,
            candidates=[
                CandidateOut(artifact_id=e.artifact_id, expected_ms=e.expected_ms, eligible=e.eligible, reason=e.reason)
                for e in decision.estimates
            ],
        )

    async def _manifests_for_resolve(self, task: str) -> list[Manifest]:
        """Promoted manifests with fresh profiles (profiles are added after promotion), cached briefly;
        the loaded set's manifests when the registry cannot be read."""
        cached = self._resolve_cache.get(task)
        now = time.monotonic()
        if cached and now - cached[0] < self.settings.resolve_cache_s:
            return cached[1]
        st = self.pool.states[task]
        mset = st.current
        ids = st.promoted or (list(mset.artifact_ids) if mset else [])
        if not ids:
            return []
        try:
            reg = self.pool.registry()
            manifests = await anyio.to_thread.run_sync(lambda: [reg.get_manifest(aid, task=task) for aid in ids])
        except RegistryError as exc:
            log.warning("%s: resolve falls back to loaded manifests: %s", task, str(exc).splitlines()[0])
            return [a.manifest for a in mset.artifacts.values()] if mset else []
        self._resolve_cache[task] = (now, manifests)
        return manifests

    @app.get("/models", response_model=ModelsResponse)
    async def models(self) -> ModelsResponse:
        """What this worker has loaded and what is promoted, with profiles and live latency."""
        now = time.monotonic()
        tasks = []
        for task, st in self.pool.states.items():
            mset = st.current
            loaded = []
            if mset is not None:
                for aid in mset.artifact_ids:
                    a = mset.artifacts[aid]
                    obs = self.pool.observations.get(aid)
                    loaded.append(
                        LoadedArtifactOut(
                            summary=summarize(a.manifest),
                            profiles={
                                p.hardware_tag: [x.model_dump() for x in p.measurements] for p in a.manifest.profiles
                            },
                            observed=ObservedOut(
                                count=obs.count, ewma_ratio=self.pool.observations.ewma(aid), p95_ratio=obs.p95_ratio,
                            ),
                            providers=a.generator.providers,
                            min_side=a.generator.min_side,
                            ejected_for_s=self.pool.breaker.seconds_left(task, aid),
                        )
                    )
            tasks.append(
                TaskModelsOut(
                    task=task, channel=self.settings.channel, promoted=st.promoted, promoted_revision=st.promoted_revision,
                    loaded=loaded, loaded_revision=mset.revision if mset else None,
                    source=mset.source if mset else "none",
                    loaded_at=mset.loaded_at.isoformat() if mset else None,
                    last_successful_poll_s_ago=(now - st.last_success_poll) if st.last_success_poll else None,
                    last_error=_error_kind(st.last_error),
                )
            )
        return ModelsResponse(
            hardware_tag=self.hardware_tag, worker_pid=os.getpid(), device_classes=self.settings.device_classes, tasks=tasks
        )


class TranslateFastPath:
    """ASGI middleware inside BentoML's: `POST /translate` goes straight to the route function.

    Why: at concurrency 16 on 2 cores the event loop's Python per request costs throughput that the
    model needs. Placed right after BentoML's request metrics (after its OpenTelemetry middleware when
    `tracing` is on), so `bentoml_service_request_*` and spans stay as they were, and through BentoML's
    own access log middleware (same class, same options) when it is on. What it skips for this one route:
    BentoML's backstop timeout (the edge times /translate), its request context (unused here), and
    Starlette's and FastAPI's routing, exception and dependency layers. Measured (README "Service
    performance: the `/translate` fast path"): event loop -0.5 ms per request, +3.4 % img/s at C=16.
    """

    def __init__(self, app: Any, access_log: Any = None) -> None:
        self.app = app
        self.translate: Any = self._translate
        if access_log is not None:  # starlette.middleware.Middleware of BentoML's AccessLogMiddleware
            self.translate = access_log.cls(self._translate, *access_log.args, **access_log.kwargs)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/translate" and scope["method"] == "POST":
            await self.translate(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    @staticmethod
    async def _translate(scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        try:
            response = await bentoml.get_current_service().translate(request)
        except Exception as exc:  # noqa: BLE001 - a bug: FastAPI's handler for it answers, as on the full stack
            response = await _unexpected(request, exc)
        await response(scope, receive, send)


def install_translate_fast_path(bentoml_app: Any, *, tracing: bool) -> bool:
    """Put `TranslateFastPath` into BentoML's middleware list (a Starlette app not yet started). False, with
    a warning, when the list is not what this was written against (a BentoML upgrade): /translate then
    takes the full stack, slower but correct."""
    specs = getattr(bentoml_app, "user_middleware", None)
    names = [getattr(m.cls, "__name__", "") for m in specs or ()]
    anchor = "OpenTelemetryMiddleware" if tracing else "RunnerTrafficMetricsMiddleware"
    if anchor not in names or getattr(bentoml_app, "middleware_stack", True) is not None:
        log.warning("POST /translate takes BentoML's full middleware stack: no %s in %s", anchor, names)
        return False
    access_log = next((m for m, name in zip(specs, names) if name == "AccessLogMiddleware"), None)
    at = names.index(anchor) + 1
    specs.insert(at, Middleware(TranslateFastPath, access_log=access_log))
    skipped = [n for n in names[at:] if n != "AccessLogMiddleware"]
    log.info("POST /translate: fast path after %s (skips %s and the routing)", anchor, ", ".join(skipped) or "nothing")
    return True


def serve_config(settings: ServiceSettings) -> dict[str, Any]:
    """BentoML's service config from our settings: read when serving starts (main process and each
    worker), so `bentoml build` bakes nothing and env / the YAML file decide at serve time."""
    config: dict[str, Any] = {
        "workers": settings.workers, "traffic": {"timeout": settings.timeout_s + BACKSTOP_S},
        "logging": {"access": {"enabled": settings.access_log}},
    }
    if not settings.tracing:  # the per-request routes skip BentoML's OpenTelemetry middleware
        config["tracing"] = {"excluded_urls": ["/translate", "/resolve"]}
    return config


def _inject_config(self: Any) -> None:
    """BentoML loads its config from the service's declared one here (serve, each worker, and build):
    ours goes in for that moment only, so the declared config (what bento.yaml records) stays without it."""
    if self is not PocketGAN:
        return _bentoml_inject_config(self)
    declared = dict(self.config)
    try:
        self.config.update(serve_config(ServiceSettings()))
    except ValueError as exc:  # invalid settings: the workers refuse to start with the full message
        log.warning("service settings invalid: %s", str(exc).splitlines()[0])
    try:
        _bentoml_inject_config(self)
    finally:
        self.config.clear()
        self.config.update(declared)


def _edge_to_asgi(self: Any, is_main: bool = True) -> Any:
    """BentoML builds each worker's ASGI app with `Service.to_asgi`; ours is wrapped in the Edge so that the
    edge is the outermost layer (BentoML's metrics, timeout and routing all sit inside it)."""
    inner = _bentoml_to_asgi(self, is_main)
    if self is not PocketGAN:
        return inner
    settings = ServiceSettings()
    install_translate_fast_path(inner, tracing=settings.tracing)
    per_worker = max(1, math.ceil(settings.max_concurrency / settings.workers))  # BentoML's own split
    return Edge(inner, settings, max_concurrency=per_worker, timeout_s=settings.timeout_s)


def _schema(self: Any) -> dict[str, Any]:
    """BentoML's schema plus our two routes, so `bentoml.SyncHTTPClient(url).translate(...)` works."""
    schema = _bentoml_schema(self)
    if self is PocketGAN:
        schema["routes"] = client_routes()
    return schema


def _openapi_spec(self: Any) -> Any:
    """Our API description (service.openapi) with this worker's settings once it serves."""
    if self is not PocketGAN:
        return _bentoml_openapi_spec.fget(self)
    return OpenAPIDocument(openapi_document(app, _LIVE.get("settings"), title=self.name, version=app.version))


# Service is an attrs class with slots: the hooks go on the class and apply to this service only
# (BentoML's originals are kept on the class so a re-import wraps them, not our wrappers).
_Service: Any = type(PocketGAN)
_ORIGINALS = _Service.__dict__.get("_pocketgan_originals") or {
    "to_asgi": _Service.to_asgi, "inject_config": _Service.inject_config, "schema": _Service.schema,
    "openapi_spec": _Service.__dict__["openapi_spec"],
}
_Service._pocketgan_originals = _ORIGINALS
_bentoml_to_asgi = _ORIGINALS["to_asgi"]
_bentoml_inject_config = _ORIGINALS["inject_config"]
_bentoml_schema = _ORIGINALS["schema"]
_bentoml_openapi_spec = _ORIGINALS["openapi_spec"]
_Service.to_asgi = _edge_to_asgi
_Service.inject_config = _inject_config
_Service.schema = _schema
_Service.openapi_spec = property(_openapi_spec)
register_yaml()
