"""pocketgan's BentoML service: image translation with per-request model selection.

Read top to bottom: configuration -> the HTTP app -> the service class (pool start-up, readiness)
-> the three routes (`/translate`, `/resolve`, `/models`).

Why a mounted FastAPI app instead of `@bentoml.api` typed inputs: hostile input must give an
exact one-line JSON 4xx (`{"error", "reason"}`) *before* anything big is parsed. With a raw
`Request` we check the content type, the Content-Length and the streamed byte count against
`max_body_bytes` before multipart parsing, then sniff the image bytes ourselves. BentoML still
provides everything around it: `/readyz` (via `__is_ready__`), `/livez`, `/metrics` (multi-worker
aggregation), `/docs.json` (it merges the FastAPI routes' OpenAPI), and traffic control:
`max_concurrency` -> 429 `{"error": "Too many requests"}`, `timeout` -> 504.

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
| `X-Pocketgan-Policy` | the device class's selection policy (`smallest` / `best-quality`) |
| `X-Pocketgan-Fallback-From` | only when the first artifact failed at run time: its id (the request was retried once) |
| `X-Pocketgan-Probe` | `true` when the artifact was re-probed after its own observed latency had excluded it |
"""

from __future__ import annotations

import asyncio
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

from registry.errors import RegistryError
from registry.manifest import Manifest
from registry.runtime import tensor_to_image
from service.images import Decoded, ImageRejected, decode_image, encode_image
from service.metrics import Metrics, build_metrics
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
from service.settings import ServiceSettings

log = logging.getLogger("pocketgan.service")
if not log.handlers:
    _h = logging.StreamHandler(sys.stderr)
    _h.setFormatter(logging.Formatter("%(asctime)s pocketgan[%(process)d] %(levelname)s %(message)s"))
    log.addHandler(_h)
    log.setLevel(logging.INFO)
    log.propagate = False

# Worker count and traffic limits are read when BentoML imports this module (main process and
# workers alike), so `pocketgan serve --workers` / env can set them without editing code.
WORKERS = int(os.environ.get("POCKETGAN_SERVICE_WORKERS", "1"))
MAX_CONCURRENCY = int(os.environ.get("POCKETGAN_SERVICE_MAX_CONCURRENCY", "64"))
TIMEOUT_S = float(os.environ.get("POCKETGAN_SERVICE_TIMEOUT_S", "30"))

app = FastAPI(
    title="pocketgan",
    description="Image-to-image translation; picks the smallest promoted generator that meets the budget.",
    version="1",
)

_ERRORS = {400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 415: {"model": ErrorBody}, 503: {"model": ErrorBody}}
_TRANSLATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "task", "device_class"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG or WEBP (by content)"},
                        "task": {"type": "string"},
                        "device_class": {"type": "string", "description": "e.g. phone-low, phone-high, desktop"},
                        "latency_budget_ms": {"type": "number", "description": "default: the device class budget"},
                        "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"], "description": "default: input format"},
                    },
                }
            }
        },
    },
    "responses": {
        "200": {
            "description": "the translated image, same size as the input; see X-Pocketgan-* headers",
            "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
            "headers": {
                h: {"schema": {"type": "string"}}
                for h in (
                    "X-Pocketgan-Artifact", "X-Pocketgan-Expected-Ms", "X-Pocketgan-Actual-Ms", "X-Pocketgan-Budget-Ms",
                    "X-Pocketgan-Budget-Met", "X-Pocketgan-No-Eligible", "X-Pocketgan-Hardware-Tag",
                    "X-Pocketgan-Policy", "X-Pocketgan-Fallback-From", "X-Pocketgan-Probe",
                )
            },
        }
    },
}


def _error(status: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "reason": reason}, status_code=status)


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
    return _error(exc.status_code, "http_error", str(exc.detail).splitlines()[0])


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return _error(500, "internal_error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


@bentoml.service(
    name="pocketgan",
    workers=WORKERS,
    traffic={"timeout": TIMEOUT_S, "max_concurrency": MAX_CONCURRENCY},
)
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
        self.limiter = anyio.CapacityLimiter(self.settings.inference_threads)
        self._pool_task: asyncio.Task[None] | None = None
        self._resolve_cache: dict[str, tuple[float, list[Manifest]]] = {}
        log.info("hardware tag %s; tasks %s; channel %s", self.hardware_tag, self.settings.tasks, self.settings.channel)

    @bentoml.on_startup
    async def start_pool(self) -> None:
        """Start loading and polling in the background; /readyz stays 503 until every task is loaded."""
        self._pool_task = asyncio.create_task(self.pool.run_forever(), name="pocketgan-pool")

    @bentoml.on_shutdown
    async def stop_pool(self) -> None:
        self.pool.stop()
        if self._pool_task is not None:
            self._pool_task.cancel()

    def __is_ready__(self) -> bool:
        return self.pool.ready()

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
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        await form.close()
        return fields, data

    def _budget(self, raw: str | float | None, device_class: str) -> float:
        if raw is None or raw == "":
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

    def _run(self, art: LoadedArtifact, decoded: Decoded, fmt: str, task: str) -> tuple[bytes, str, tuple[int, int], float]:
        """Preprocess, infer, postprocess, encode: blocking, runs in a worker thread.
        Returns (body, content type, tensor (H, W), inference seconds)."""
        m, gen = self.metrics, art.generator
        t0 = time.perf_counter()
        x, size = gen.prepare(decoded.image, max_side=self.settings.max_side)
        t1 = time.perf_counter()
        y = gen.run(x)
        t2 = time.perf_counter()
        out = tensor_to_image(y, size=size)
        t3 = time.perf_counter()
        body, ctype = encode_image(out, fmt, jpeg_quality=self.settings.jpeg_quality)
        t4 = time.perf_counter()
        m.processing_duration.labels(task, "preprocess").observe(t1 - t0)
        m.inference_duration.labels(task, art.manifest.artifact_id).observe(t2 - t1)
        m.processing_duration.labels(task, "postprocess").observe(t3 - t2)
        m.processing_duration.labels(task, "encode").observe(t4 - t3)
        return body, ctype, (x.shape[2], x.shape[3]), t2 - t1

    # -- routes -------------------------------------------------------------------------------
    @app.post("/translate", openapi_extra=_TRANSLATE_BODY, responses=_ERRORS, response_class=Response)
    async def translate(self, request: Request) -> Response:
        """Translate one image with the smallest promoted generator expected to meet the budget."""
        try:
            fields, data = await self._read_form(request)
            started = time.perf_counter()
            task = self._check_task(fields.get("task"))
            device_class = fields.get("device_class")
            if not device_class:
                raise ImageRejected(400, "bad_parameter", "field 'device_class' is required")
            if device_class not in self.settings.device_classes:
                raise ImageRejected(
                    400, "unknown_device_class",
                    f"unknown device class {device_class[:64]!r}; known: {', '.join(self.settings.device_classes)}",
                )
            budget = self._budget(fields.get("latency_budget_ms"), device_class)
            out_fmt = fields.get("output_format") or None
            if out_fmt is not None and out_fmt not in ("png", "jpeg", "webp"):
                raise ImageRejected(400, "bad_parameter", f"output_format must be png, jpeg or webp, got {out_fmt[:16]!r}")
            mset = self.pool.snapshot(task)  # held for the whole request: a swap does not affect it
            if mset is None:
                return _error(503, "not_ready", f"no model loaded for {task} yet")
            decoded = await anyio.to_thread.run_sync(
                lambda: decode_image(data, max_pixels=self.settings.max_pixels), limiter=self.limiter
            )
        except ImageRejected as r:
            return self._reject(r)
        t_decoded = time.perf_counter()
        self.metrics.processing_duration.labels(task, "decode").observe(t_decoded - started)
        w, h = decoded.image.size
        fmt = out_fmt or decoded.format.lower()
        # a model that raises is retried once on another (service.pool); never a 500 for a model's fault
        served = await self.pool.run_with_fallback(
            mset, task, device_class, budget, h, w,
            lambda art: anyio.to_thread.run_sync(lambda: self._run(art, decoded, fmt, task), limiter=self.limiter),
        )
        if served is None:
            resp = _error(503, "no_servable_model", f"no servable model for {task} right now; retry shortly")
            resp.headers["Retry-After"] = "1"
            return resp
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
        req = SelectionRequest(task=task, hardware_tag=tag, budget_ms=body.latency_budget_ms, height=body.height, width=body.width)
        decision = select([candidate_for(m, tag) for m in manifests], {}, req)  # client hardware: no server observations
        chosen = next(m for m in manifests if m.artifact_id == decision.artifact_id)
        summary = summarize(chosen)
        expires = self.settings.presign_expires_s
        try:
            url = await anyio.to_thread.run_sync(
                lambda: self.pool.registry().presign(chosen.artifact_id, path=chosen.model_file, task=task, expires_s=expires)
            )
        except RegistryError as exc:
            return _error(503, "registry_unavailable", f"cannot presign: {str(exc).splitlines()[0]}")
        return ResolveResponse(
            task=task, hardware_tag=tag, latency_budget_ms=body.latency_budget_ms, artifact=summary, url=url,
            url_expires_s=expires, sha256=summary.model_sha256, expected_ms=decision.expected_ms,
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
                    last_error=st.last_error,
                )
            )
        return ModelsResponse(
            hardware_tag=self.hardware_tag, worker_pid=os.getpid(), device_classes=self.settings.device_classes, tasks=tasks
        )
