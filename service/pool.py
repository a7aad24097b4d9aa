"""The model pool: promoted sets loaded once, swapped atomically, followed by alias polling.

- A `ModelSet` is immutable: one `OnnxGenerator` (one ONNX Runtime session) per artifact, all
  warmed up. `ModelPool.snapshot(task)` returns the current set; a request holds on to it for
  its whole life, so in-flight requests finish on the old set after a swap.
- The background loop (`run_forever`) loads each task's promoted set, then polls the alias
  ETag every `poll_interval_s`. A changed alias is pulled (sha256-verified by the registry),
  loaded and warmed *completely* before the reference is swapped. Any failure keeps the old set,
  logs one line and increments `pocketgan_model_swap_failures_total{reason}`.
- After each successful load the set is recorded in `<cache>/service/<task>/<channel>.json`
  (artifact dirs + manifests). If the registry is unreachable while nothing is loaded, that
  record is re-verified (sha256 of every file) and served with source="cache".
- Blocking work (S3, hashing, session creation, warm-up) runs in worker threads.
- Before a set is swapped in, every new artifact passes the generator contract
  (`registry.contract`, under this process's ONNX Runtime) and the service's own need: RGB in,
  RGB out (3 -> 3 channels). One failing artifact refuses the whole set
  (`pocketgan_model_swap_failures_total{reason="contract"}`); the old set keeps serving.
- Serving trust: `decide` picks per request (selection policy of the device class, artifacts the
  circuit breaker ejected left out, bounded re-probing of artifacts excluded by their own latency
  ratio); `model_failed` feeds the breaker; `observe` feeds the latency correction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Generic, Literal, TypeVar

import anyio

from registry.artifact import read_artifact_dir
from registry.config import RegistrySettings
from registry.contract import check_generator
from registry.errors import ContractViolation, IntegrityError, InvalidInput, NotFound, RegistryError, RegistryUnreachable
from registry.manifest import ContractCheck, Manifest
from registry.records import Alias
from registry.runtime import OnnxGenerator
from service.fallback import CircuitBreaker
from service.metrics import Metrics
from service.schemas import ArtifactSummary
from service.selection import Candidate, Decision, Observed, SelectionRequest, profile_expected_ms, select
from service.settings import ServiceSettings

log = logging.getLogger("pocketgan.service")

Source = Literal["registry", "cache"]


def summarize(m: Manifest) -> ArtifactSummary:
    model = m.file(m.model_file)
    assert model is not None  # the manifest validator guarantees it
    a = m.architecture
    return ArtifactSummary(
        artifact_id=m.artifact_id, task=m.task, method=m.method, family=a.family, channel_config=a.channel_config,
        macs=a.macs, params=a.params, total_bytes=m.total_bytes, precision=a.precision, model_sha256=model.sha256,
        model_bytes=model.bytes, profiled_tags=sorted(p.hardware_tag for p in m.profiles), formats=m.formats,
    )


def fidelity(m: Manifest) -> float | None:
    """Recorded fidelity for the `best-quality` policy: a teacher is the reference (1.0), a student
    its SSIM to the teacher (None when not measured)."""
    return 1.0 if m.method == "teacher" else m.quality.ssim_to_teacher


def candidate_for(m: Manifest, hardware_tag: str) -> Candidate:
    prof = m.profile(hardware_tag)
    return Candidate(
        artifact_id=m.artifact_id, macs=m.architecture.macs, total_bytes=m.total_bytes,
        measurements=list(prof.measurements) if prof else [], fidelity=fidelity(m),
    )


@dataclass(frozen=True)
class LoadedArtifact:
    manifest: Manifest
    generator: OnnxGenerator
    directory: Path


@dataclass(frozen=True)
class ModelSet:
    """An immutable promoted set, ready to serve."""

    task: str
    revision: int | None
    artifact_ids: tuple[str, ...]
    artifacts: dict[str, LoadedArtifact]
    source: Source
    loaded_at: datetime
    here: tuple[Candidate, ...] = ()
    """selection candidates for the service's own hardware tag, computed once per set"""


class Observations:
    """Per-artifact EWMA of inference time / profile p95 at that size, and of its absolute deviation.

    p95 ~= ewma + 2 * ewma_abs_dev (for a normal distribution the mean absolute deviation is
    ~0.8 sigma and p95 = mean + 1.645 sigma ~= mean + 2 * MAD). Updated on the event loop only.

    Built so that no request sequence can poison it (issue 11): only inference time counts
    (decode/encode are not the model's), tensors under `min_pixels` are ignored (fixed costs
    dwarf a profile scaled down to 4x4), each sample and the p95 are clamped to
    [1/clamp, clamp], and the state decays toward ratio 1 with `half_life_s` while the artifact
    is not observed. `note_excluded` counts requests an artifact sat out because of its own
    ratio; every `reprobe_every`-th it is due for a re-probe.
    """

    def __init__(
        self, alpha: float, *, min_pixels: int = 0, clamp: float = float("inf"), half_life_s: float = float("inf"),
        reprobe_every: int = 0, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.alpha = alpha
        self.min_pixels = min_pixels
        self.clamp = clamp
        self.half_life_s = half_life_s
        self.reprobe_every = reprobe_every
        self._clock = clock
        self._s: dict[str, list[float]] = {}  # id -> [count, ewma, ewma_abs_dev, last update]
        self._waiting: dict[str, int] = {}

    def add(
        self, artifact_id: str, inference_ms: float, profile_ms: float | None, pixels: int | None = None, *,
        restart: bool = False,
    ) -> bool:
        """One sample; False when ignored (unprofiled, or fewer than `min_pixels` pixels).
        `restart`: the sample of a re-probe replaces the stale state (ratio = this sample) instead
        of nudging it, so one fast probe re-admits the artifact and one slow probe keeps it out."""
        if profile_ms is None or profile_ms <= 0:
            return False  # unprofiled: nothing to correct
        if pixels is not None and pixels < self.min_pixels:
            return False
        v = min(max(inference_ms / profile_ms, 1.0 / self.clamp), self.clamp)
        now = self._clock()
        s = self._s.get(artifact_id)
        if s is None or restart:
            self._s[artifact_id] = [(s[0] if s else 0) + 1, v, 0.0, now]
            return True
        s[1], s[2] = self._decayed(s, now)
        s[0] += 1
        dev = abs(v - s[1])
        s[1] += self.alpha * (v - s[1])
        s[2] += self.alpha * (dev - s[2])
        s[3] = now
        return True

    def _decayed(self, s: list[float], now: float) -> tuple[float, float]:
        if self.half_life_s == float("inf"):
            return s[1], s[2]
        f = 0.5 ** (max(0.0, now - s[3]) / self.half_life_s)
        return 1.0 + (s[1] - 1.0) * f, s[2] * f

    def get(self, artifact_id: str) -> Observed:
        s = self._s.get(artifact_id)
        if s is None:
            return Observed()
        ewma, dev = self._decayed(s, self._clock())
        return Observed(count=int(s[0]), p95_ratio=min(ewma + 2 * dev, self.clamp))

    def ewma(self, artifact_id: str) -> float | None:
        s = self._s.get(artifact_id)
        return self._decayed(s, self._clock())[0] if s else None

    def note_excluded(self, artifact_ids: list[str]) -> set[str]:
        """Count one more request these artifacts sat out on their own ratio; those now due for a re-probe."""
        due = set()
        for aid in artifact_ids:
            n = self._waiting.get(aid, 0) + 1
            self._waiting[aid] = n
            if self.reprobe_every and n >= self.reprobe_every:
                due.add(aid)
        return due

    def probed(self, artifact_id: str) -> None:
        self._waiting.pop(artifact_id, None)


T = TypeVar("T")


@dataclass(frozen=True)
class Served(Generic[T]):
    """What `ModelPool.run_with_fallback` ran: the decision that served, its result, and the
    artifact that failed first (None when the first choice worked)."""

    decision: Decision
    result: T
    failed_from: str | None = None


@dataclass
class TaskState:
    current: ModelSet | None = None
    seen_etag: str | None = None
    promoted: list[str] = field(default_factory=list)
    promoted_revision: int | None = None
    last_success_poll: float | None = None
    last_error: str | None = None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ContractViolation):
        return "contract"
    if isinstance(exc, IntegrityError):
        return "integrity"
    if isinstance(exc, RegistryUnreachable):
        return "unreachable"
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, InvalidInput):
        return "load_error"
    return "other"


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ModelPool:
    """Loaded model sets per task plus the loop that keeps them in step with the registry."""

    def __init__(
        self,
        settings: ServiceSettings,
        metrics: Metrics,
        hardware_tag: str,
        registry_factory: Callable[[], Any] | None = None,
        cache_root: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.hardware_tag = hardware_tag
        self._registry_factory = registry_factory or _default_registry
        self._registry: Any = None
        self.states: dict[str, TaskState] = {t: TaskState() for t in settings.tasks}
        self.observations = Observations(
            settings.ewma_alpha, min_pixels=settings.ratio_min_pixels, clamp=settings.ratio_clamp,
            half_life_s=settings.ratio_half_life_s, reprobe_every=settings.reprobe_every, clock=clock,
        )
        self.breaker = CircuitBreaker(
            settings.breaker_failures, settings.breaker_cooldown_s, clock=clock, on_change=self._breaker_changed
        )
        self._cache_root = cache_root
        self._stop = asyncio.Event()

    # -- request side -------------------------------------------------------------------------
    def snapshot(self, task: str) -> ModelSet | None:
        st = self.states.get(task)
        return st.current if st else None

    def ready(self) -> bool:
        """Every configured task has a loaded, warmed set with at least one artifact the circuit
        breaker has not ejected (a servable model)."""
        return all(
            st.current is not None and any(not self.breaker.ejected(task, aid) for aid in st.current.artifact_ids)
            for task, st in self.states.items()
        )

    # -- serving trust: selection, failures, observations ---------------------------------------
    def decide(
        self, mset: ModelSet, task: str, device_class: str, budget_ms: float, height: int, width: int,
        exclude: frozenset[str] = frozenset(),
    ) -> Decision | None:
        """The artifact for one request, by the device class's policy, leaving out `exclude` and
        ejected artifacts (None when nothing is left). Now and then an artifact excluded by its own
        observed ratio is re-probed (judged on its profile alone) so it can be observed again."""
        cands = [c for c in mset.here if c.artifact_id not in exclude and not self.breaker.ejected(task, c.artifact_id)]
        if not cands:
            return None
        observed = {c.artifact_id: self.observations.get(c.artifact_id) for c in cands}
        req = SelectionRequest(task=task, hardware_tag=self.hardware_tag, budget_ms=budget_ms, height=height, width=width)
        policy = self.settings.policy_for(device_class)
        kw = {"min_observations": self.settings.min_observations, "policy": policy}
        decision = select(cands, observed, req, **kw)
        if exclude:
            return decision  # a retry after a failure: no exploration
        due = self.observations.note_excluded([e.artifact_id for e in decision.estimates if e.excluded_by_ratio])
        if due:
            probe = select(cands, observed, req, probe=frozenset(due), **kw)
            if probe.probe:
                self.observations.probed(probe.artifact_id)
                self.metrics.latency_probes.labels(task).inc()
                return probe
        return decision

    async def run_with_fallback(
        self, mset: ModelSet, task: str, device_class: str, budget_ms: float, height: int, width: int,
        run: Callable[[LoadedArtifact], Awaitable[T]], *, first: Decision | None = None,
        passthrough: tuple[type[BaseException], ...] = (),
    ) -> Served[T] | None:
        """`run` the chosen artifact (`first`, else decided here); if it raises, once more on the next
        choice without it (the next eligible by the policy, else the fastest other). None when nothing
        servable is left or both attempts failed: the caller answers 503, never 500, for a model's
        fault. Exceptions in `passthrough` are not the model's fault (a missed deadline): re-raised."""
        decision = first or self.decide(mset, task, device_class, budget_ms, height, width)
        failed: str | None = None
        for _ in range(2):
            if decision is None:
                return None
            try:
                result = await run(mset.artifacts[decision.artifact_id])
            except passthrough:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever the model raised
                self.model_failed(task, decision.artifact_id, exc)
                failed = failed or decision.artifact_id
                decision = self.decide(mset, task, device_class, budget_ms, height, width, exclude=frozenset({failed}))
                continue
            self.breaker.success(task, decision.artifact_id)
            if failed is not None:
                self.metrics.fallbacks.labels(task).inc()
            return Served(decision, result, failed)
        return None

    def model_failed(self, task: str, artifact_id: str, exc: BaseException) -> None:
        """A run-time failure of a loaded model: counted, logged, fed to the circuit breaker."""
        self.metrics.model_failures.labels(task, artifact_id).inc()
        ejected = self.breaker.failure(task, artifact_id)
        log.error(
            "%s: artifact %s failed at run time%s: %s", task, artifact_id,
            f" (ejected for {self.settings.breaker_cooldown_s:g} s)" if ejected else "", _one_line(exc),
        )

    def _breaker_changed(self, task: str, artifact_id: str, ejected: bool) -> None:
        self.metrics.artifact_ejected.labels(task, artifact_id).set(1 if ejected else 0)
        if ejected:
            self.metrics.artifact_ejections.labels(task, artifact_id).inc()

    def observe(
        self, mset: ModelSet, artifact_id: str, height: int, width: int, inference_ms: float, *, probe: bool = False
    ) -> bool:
        """Feed the latency correction: inference time vs the profile p95 at the tensor's size (a
        re-probe's sample restarts the artifact's ratio, see `Observations.add`)."""
        cand = next((c for c in mset.here if c.artifact_id == artifact_id), None)
        profile_ms = profile_expected_ms(cand.measurements, height, width) if cand is not None else None
        return self.observations.add(artifact_id, inference_ms, profile_ms, pixels=height * width, restart=probe)

    # -- registry -----------------------------------------------------------------------------
    def registry(self) -> Any:
        if self._registry is None:
            self._registry = self._registry_factory()
        return self._registry

    def cache_record(self, task: str) -> Path:
        root = self._cache_root
        if root is None:
            root = RegistrySettings.from_env().cache_dir  # the registry's own cache dir (POCKETGAN_CACHE_DIR)
        return root / "service" / task / f"{self.settings.channel}.json"

    # -- loading (blocking; run in a thread) ----------------------------------------------------
    def _load_generator(self, directory: Path, manifest: Manifest, reuse: ModelSet | None) -> OnnxGenerator:
        if reuse is not None and manifest.artifact_id in reuse.artifacts:
            return reuse.artifacts[manifest.artifact_id].generator  # immutable: same bytes, same session
        record = self.check_contract(directory, manifest)
        gen = OnnxGenerator(
            directory / manifest.model_file, intra_op_threads=self.settings.intra_op_threads,
            size_multiple=record.size_multiple, min_side=record.min_side,
        )
        m = gen.size_multiple
        side = max(m, (self.settings.warmup_size + m - 1) // m * m)
        gen.warm_up(side, side, runs=2)
        return gen

    @staticmethod
    def check_contract(directory: Path, manifest: Manifest) -> ContractCheck:
        """The generator contract under this process's ONNX Runtime, plus the service's own need:
        it feeds RGB images and returns RGB images (3 -> 3 channels)."""
        a = manifest.architecture
        if (a.input_nc, a.output_nc) != (3, 3):
            raise ContractViolation(
                f"artifact {manifest.artifact_id} is {a.input_nc}->{a.output_nc} channels; the service translates RGB to RGB (3->3)"
            )
        try:
            return check_generator(directory / manifest.model_file, a)
        except ContractViolation as exc:
            raise ContractViolation(f"artifact {manifest.artifact_id}: {exc}") from exc

    def load_from_registry(self, alias: Alias, reuse: ModelSet | None) -> ModelSet:
        reg = self.registry()
        loaded: dict[str, LoadedArtifact] = {}
        for aid in alias.artifacts:
            # sha256-verified; manifest.json has profiles merged; mobile variants (model.ort, ...) are not needed here
            directory = Path(reg.pull(aid, task=alias.task, with_variants=False))
            manifest = read_artifact_dir(directory, verify=False)
            if manifest.artifact_id != aid:
                raise IntegrityError(f"manifest of {aid} names artifact {manifest.artifact_id}")
            loaded[aid] = LoadedArtifact(manifest, self._load_generator(directory, manifest, reuse), directory)
        if not loaded:
            raise NotFound(f"alias {alias.task}/{alias.channel} has an empty set")
        mset = self._make_set(alias.task, alias.revision, tuple(alias.artifacts), loaded, "registry")
        self._write_record(mset)
        return mset

    def _write_record(self, mset: ModelSet) -> None:
        path = self.cache_record(mset.task)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            record = {
                "task": mset.task, "revision": mset.revision, "artifacts": list(mset.artifact_ids),
                "dirs": {aid: str(a.directory) for aid, a in mset.artifacts.items()},
                "manifests": {aid: json.loads(a.manifest.model_dump_json()) for aid, a in mset.artifacts.items()},
            }
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".set-", suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only cache must not stop serving
            log.warning("could not record the loaded set for offline start: %s", _one_line(exc))

    def load_from_cache(self, task: str) -> ModelSet:
        """The last set this service loaded, re-verified from disk (registry down at start)."""
        path = self.cache_record(task)
        if not path.is_file():
            raise NotFound(f"no cached set for {task}/{self.settings.channel} at {path}")
        record = json.loads(path.read_text())
        loaded: dict[str, LoadedArtifact] = {}
        for aid in record["artifacts"]:
            directory = Path(record["dirs"][aid])
            local = read_artifact_dir(directory, verify=True, variants_optional=True)  # sha256 of every file pulled
            if local.artifact_id != aid:
                raise IntegrityError(f"cached {directory} holds {local.artifact_id}, expected {aid}")
            manifest = Manifest.model_validate(record["manifests"][aid])
            if manifest.artifact_id != aid or manifest.files != local.files:
                raise IntegrityError(f"cached manifest of {aid} does not match its directory")
            loaded[aid] = LoadedArtifact(manifest, self._load_generator(directory, manifest, None), directory)
        return self._make_set(task, record.get("revision"), tuple(record["artifacts"]), loaded, "cache")

    def _make_set(
        self, task: str, revision: int | None, ids: tuple[str, ...], loaded: dict[str, LoadedArtifact], source: Source,
        loaded_at: datetime | None = None,
    ) -> ModelSet:
        here = tuple(candidate_for(loaded[aid].manifest, self.hardware_tag) for aid in ids)
        return ModelSet(task, revision, ids, loaded, source, loaded_at or datetime.now(timezone.utc), here)

    # -- swapping -------------------------------------------------------------------------------
    def _publish(self, task: str, new: ModelSet) -> None:
        st = self.states[task]
        old = st.current
        st.current = new  # the atomic swap: one reference assignment
        m = self.metrics
        if old is not None:
            for aid in old.artifact_ids:
                m.loaded_artifact.labels(task, aid, old.source).set(0)
        for aid in new.artifact_ids:
            m.loaded_artifact.labels(task, aid, new.source).set(1)
            m.selections.labels(task, aid)
            m.inference_duration.labels(task, aid)
            for dc in self.settings.device_classes:
                m.request_duration.labels(task, dc, aid)
        m.serving_from_cache.labels(task).set(1 if new.source == "cache" else 0)
        m.swaps.labels(task).inc()
        log.info(
            "serving %s/%s revision %s from %s: %s", task, self.settings.channel, new.revision, new.source,
            ", ".join(new.artifact_ids),
        )

    def _fail(self, task: str, what: str, exc: BaseException) -> None:
        st = self.states[task]
        st.last_error = f"{what}: {_one_line(exc)}"
        self.metrics.swap_failures.labels(task, _reason(exc)).inc()
        keep = f"keeping revision {st.current.revision}" if st.current else "nothing loaded: not ready"
        log.error("%s %s failed (%s): %s", task, what, keep, _one_line(exc))

    async def refresh(self, task: str) -> None:
        """One poll step for one task (initial load included)."""
        st = self.states[task]
        channel = self.settings.channel
        try:
            snap = await anyio.to_thread.run_sync(
                lambda: self.registry().poll_alias(task, channel, st.seen_etag if st.current else None)
            )
        except RegistryError as exc:
            self.metrics.poll_errors.labels(task).inc()
            repeated = st.last_error == f"poll: {_one_line(exc)}"  # log a persisting failure once, count it always
            st.last_error = f"poll: {_one_line(exc)}"
            if st.current is None and isinstance(exc, RegistryUnreachable):
                await self._try_cache(task, exc, quiet=repeated)
            elif repeated:
                pass
            elif st.current is None:
                log.warning("%s: nothing to load yet, not ready: %s", task, _one_line(exc))
            else:
                log.warning("%s: alias poll failed, still serving revision %s: %s", task, st.current.revision, _one_line(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the loop
            self.metrics.poll_errors.labels(task).inc()
            st.last_error = f"poll: {_one_line(exc)}"
            log.exception("%s: alias poll crashed", task)
            return
        st.last_success_poll = time.monotonic()
        if st.last_error and st.last_error.startswith("poll:"):
            st.last_error = None
        if snap is None:
            return
        alias = snap.alias
        st.promoted, st.promoted_revision = list(alias.artifacts), alias.revision
        cur = st.current
        if cur is not None and cur.artifact_ids == tuple(alias.artifacts):
            st.seen_etag = snap.etag
            if cur.source == "cache" or cur.revision != alias.revision:  # same bytes: re-label, no reload
                await anyio.to_thread.run_sync(self._write_record, cur)
                self._publish(task, self._make_set(task, alias.revision, cur.artifact_ids, cur.artifacts, "registry", cur.loaded_at))
            return
        log.info("%s: alias revision %s -> loading %s", task, alias.revision, ", ".join(alias.artifacts))
        try:
            new = await anyio.to_thread.run_sync(self.load_from_registry, alias, cur)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old set
            self._fail(task, f"load of revision {alias.revision}", exc)
            if not isinstance(exc, RegistryUnreachable):
                st.seen_etag = snap.etag  # a broken set is not retried until the alias changes again
            elif st.current is None:
                await self._try_cache(task, exc)
            return
        st.seen_etag = snap.etag
        st.last_error = None
        self._publish(task, new)

    async def _try_cache(self, task: str, cause: BaseException, quiet: bool = False) -> None:
        try:
            cached = await anyio.to_thread.run_sync(self.load_from_cache, task)
        except NotFound:
            if not quiet:
                log.error("%s: registry unreachable and no cached set: not ready, retrying (%s)", task, _one_line(cause))
            return
        except Exception as exc:  # noqa: BLE001
            self._fail(task, "load of the cached set", exc)
            return
        log.warning("%s: registry unreachable (%s): serving the verified cached set", task, _one_line(cause))
        self._publish(task, cached)

    def tick_gauges(self) -> None:
        now = time.monotonic()
        for task, st in self.states.items():
            if st.last_success_poll is not None:
                self.metrics.since_last_poll.labels(task).set(now - st.last_success_poll)

    async def run_forever(self) -> None:
        """Initial load, then poll every poll_interval_s (retry_interval_s while not ready)."""
        while not self._stop.is_set():
            for task in self.settings.tasks:
                await self.refresh(task)
            self.tick_gauges()
            interval = self.settings.poll_interval_s if self.ready() else min(
                self.settings.retry_interval_s, self.settings.poll_interval_s
            )
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()


def _default_registry() -> Any:
    from registry.client import Registry

    return Registry.from_env()
