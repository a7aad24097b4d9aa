"""`pocketgan demo`: the whole flow from a real pretrained teacher, in one command.

local S3 -> compression job from the pretrained vintagify CycleGAN teacher (no teacher training:
magnitude-pruned students distilled on the 400 embedded facades photos, export, publish)
-> promote the teacher, then roll the students out one at a time (largest first) -> `bentoml serve`
translates held-out photos over HTTP after each roll-out, so every column of the side-by-side PNG
(input | teacher | each student, with MACs, served latency and SSIM to the teacher) was really
served by the service; an impossible budget shows the no-eligible path, and the `best-quality`
policy at two budgets picks two different models.

Everything lives under one work dir; a re-run reuses the S3 server, the completed stages and the
published artifacts, so only the serving part runs again. This module is the top-level glue, so it
is the one place allowed to use both `compression_jobs` and `service` (the latter only as a
subprocess speaking HTTP, like any client).
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import httpx
from PIL import Image, ImageDraw
from pydantic import BaseModel

from registry.cli import json_report
from registry.local_s3 import LocalS3Handle, export_lines, running, start_local_s3, write_state

if TYPE_CHECKING:
    from compression_jobs.data import Sample
    from compression_jobs.gan_compression.config import JobConfig
    from registry.client import Registry

CHANNEL = "production"
IMPOSSIBLE_BUDGET_MS = 1.0  # below anything a generator can do here: shows the no-eligible path
ROLLOUT_DEVICE_CLASS = "phone-high"  # policy `smallest` (the default): each roll-out shows its newest, smallest model
QUALITY_DEVICE_CLASS = "desktop"  # the demo gives it the `best-quality` policy: the best model that fits the budget


class Translation(BaseModel):
    """One image served by the service, as the client saw it."""

    image: str
    budget_ms: float
    device_class: str = ROLLOUT_DEVICE_CLASS
    policy: str = "smallest"
    artifact_id: str
    method: str
    latency_ms: float
    expected_ms: float | None = None
    budget_met: bool
    no_eligible: bool
    output: Path


def _say(msg: str) -> None:
    click.secho(msg, fg="cyan", err=True)


def ensure_s3(s3_dir: Path) -> LocalS3Handle:
    """The work dir's local S3: reused when its recorded PID is alive, else started."""
    handle = running(s3_dir)
    if handle is not None:
        _say(f"[s3] reusing local S3 at {handle.endpoint} (pid {handle.pid})")
        return handle
    _say(f"[s3] starting SeaweedFS in {s3_dir} …")
    handle = start_local_s3(s3_dir)
    write_state(handle)
    _say(f"[s3] running at {handle.endpoint} (pid {handle.pid})")
    return handle


def compress(config: str, run_dir: Path, registry: Registry, teacher: Path | None = None,
             overrides: dict | None = None, publish_all: bool = False) -> tuple[JobConfig, list[dict]]:
    """Run (or resume) the compression job; returns its config and what its publish stage published."""
    from compression_jobs.gan_compression.config import load_config
    from compression_jobs.pipeline import Context, run_pipeline

    job = load_config(config, overrides, teacher=teacher)
    _say(f"[compress] config {config!r} -> {run_dir} (completed stages are reused)"
         + (f"; teacher {teacher} (not trained)" if teacher else ""))
    t0 = time.perf_counter()
    run_pipeline(Context(job, run_dir, registry=registry, publish_all=publish_all), resume=True,
                 echo=lambda m: _say(f"[compress] {m}"))
    _say(f"[compress] done in {time.perf_counter() - t0:.0f} s")
    published = json.loads((run_dir / "publish" / "published.json").read_text())
    if not published:
        raise click.ClickException(f"the job in {run_dir} published nothing (publish.enabled is false?)")
    report = run_dir / "export" / "report.md"
    if report.is_file():
        _say(f"[compress] quality report with baselines: {report}")
    return job, published


def promote_set(registry: Registry, task: str, ids: list[str]) -> list[str]:
    """Promote exactly `ids` to the production channel, unless it already is that set."""
    from registry.errors import MissingObject

    try:
        current = registry.read_alias(task, CHANNEL)
    except MissingObject:  # never promoted (a missing bucket is an error, not "no alias")
        current = None
    if current is not None and sorted(current.alias.artifacts) == sorted(ids):
        _say(f"[promote] {task}/{CHANNEL} already holds these {len(ids)} artifacts (revision {current.alias.revision})")
        return ids
    alias = registry.promote(task, CHANNEL, ids, reason="pocketgan demo")
    _say(f"[promote] {task}/{CHANNEL} -> revision {alias.revision}: {', '.join(ids)}")
    return ids


class Service:
    """`pocketgan serve` as a child process (service.launcher), for as long as the `with` block runs."""

    def __init__(self, env: dict[str, str], task: str, log: Path, port: int | None = None) -> None:
        from service.cli import serve_env
        from service.launcher import ServiceProcess

        env = serve_env(env, workers=1, tasks=(task,), channel=CHANNEL, hardware_tag=None,
                        poll_interval_s=2.0, max_concurrency=None, timeout_s=None)
        env["POCKETGAN_SERVICE_DEVICE_CLASS_POLICIES"] = json.dumps({QUALITY_DEVICE_CLASS: "best-quality"})
        self._server = ServiceProcess(env, log, port=port)
        self.port, self.url, self.log = self._server.port, self._server.url, log

    def __enter__(self) -> "Service":
        from service.launcher import ServiceStartError

        _say(f"[serve] starting bentoml serve on {self.url} (log: {self.log})")
        self._server.start()
        try:
            self._server.wait_for("/readyz", 300.0)
        except ServiceStartError as exc:
            self._server.stop()
            raise click.ClickException(f"the service did not become ready: {str(exc).splitlines()[0]}") from exc
        except BaseException:  # __exit__ does not run when __enter__ fails: stop the server here
            self._server.stop()
            raise
        _say("[serve] ready (models loaded and warmed up)")
        return self

    @property
    def pid(self) -> int:
        """PID of the service process (also its process group id)."""
        assert self._server.proc is not None
        return self._server.proc.pid

    def wait(self) -> None:
        """Block until Ctrl-C or the service exits."""
        self._server.wait()

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


def translate(url: str, task: str, img: Image.Image, name: str, budget_ms: float, out: Path,
              methods: dict[str, str], device_class: str = ROLLOUT_DEVICE_CLASS) -> Translation:
    """POST one image to /translate exactly as a mobile client would (multipart form)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    resp = httpx.post(
        f"{url}/translate",
        data={"task": task, "device_class": device_class, "latency_budget_ms": str(budget_ms), "output_format": "png"},
        files={"image": (name, buf.getvalue(), "image/png")},
        timeout=120.0,
    )
    if resp.status_code != 200:
        raise click.ClickException(f"/translate answered {resp.status_code}: {resp.text[:300]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(resp.content)
    h = resp.headers
    aid = h["X-Pocketgan-Artifact"]
    expected = h.get("X-Pocketgan-Expected-Ms", "none")
    return Translation(
        image=name, budget_ms=budget_ms, device_class=device_class, policy=h.get("X-Pocketgan-Policy", "?"),
        artifact_id=aid, method=methods.get(aid, "?"),
        latency_ms=float(h.get("X-Pocketgan-Actual-Ms", "nan")),
        expected_ms=None if expected == "none" else float(expected),
        budget_met=h.get("X-Pocketgan-Budget-Met") == "true",
        no_eligible=h.get("X-Pocketgan-No-Eligible") == "true", output=out,
    )


def quality_budgets(results: list[Translation], teacher_id: str, student_id: str) -> tuple[float, float] | None:
    """Two budgets for the `best-quality` policy, from the service's own expected latencies: between the
    student's and the teacher's (the student is the best model that fits) and twice the teacher's (the
    teacher fits). None when the service gave no expectation or the student is not faster."""
    def expected(aid: str) -> float | None:
        xs = [r.expected_ms for r in results if r.artifact_id == aid and r.expected_ms is not None]
        return max(xs) if xs else None

    from service.settings import ServiceSettings

    t, s = expected(teacher_id), expected(student_id)
    if t is None or s is None or s >= t:
        return None
    # the service's accepted budget range (the demo runs it with the defaults): a budget outside is a 400
    fields = ServiceSettings.model_fields
    lo, hi = fields["min_budget_ms"].default, fields["max_budget_ms"].default
    return max(lo, round(math.sqrt(t * s), 1)), min(hi, round(2 * t, 1))


def best_quality_picks(url: str, task: str, sample: Sample, results: list[Translation], teacher_id: str,
                       students: list[str], methods: dict[str, str], out_dir: Path) -> list[Translation]:
    """The `best-quality` device class asked twice, a tight and a generous budget: two different models."""
    budgets = quality_budgets(results, teacher_id, students[0]) if students else None
    if budgets is None:
        _say("[policy] best-quality needs a served student faster than the teacher: skipped")
        return []
    picks = []
    for budget in budgets:
        pick = translate(url, task, sample.source, sample.name, budget,
                         out_dir / f"best-quality-{budget:g}ms" / f"{Path(sample.name).stem}.png", methods,
                         device_class=QUALITY_DEVICE_CLASS)
        _say(f"[policy] {QUALITY_DEVICE_CLASS} ({pick.policy}), budget {budget:g} ms -> {pick.artifact_id} "
             f"({pick.method}{', best that fits' if pick.budget_met else ', none fits'})")
        picks.append(pick)
    return picks


def wait_for_set(url: str, task: str, ids: list[str], timeout_s: float = 300.0) -> None:
    """Block until the service has loaded exactly `ids` for `task` (the hot swap after a promotion)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{url}/models", timeout=5.0).json()
            for t in body.get("tasks", []):
                loaded = {a["summary"]["artifact_id"] for a in t.get("loaded", [])}
                if t.get("task") == task and loaded == set(ids):
                    return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise click.ClickException(f"the service did not load {ids} within {timeout_s:.0f} s")


def side_by_side(rows: list[list[Image.Image]], headers: list[str], path: Path, cell: int = 192) -> Path:
    """One PNG grid: a labelled column per header (lines split on newlines), one row per held-out image."""
    pad = 4
    top = 8 + 12 * max((h.count("\n") + 1 for h in headers), default=1)
    width = len(headers) * (cell + pad) + pad
    height = top + len(rows) * (cell + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(headers):
        draw.multiline_text((pad + c * (cell + pad) + 2, 4), text, fill="black", spacing=2)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            sheet.paste(img.convert("RGB").resize((cell, cell), Image.BICUBIC), (pad + c * (cell + pad), top + pad + r * (cell + pad)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


@click.command("demo")
@json_report
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("pocketgan-demo"),
              show_default=True, help="Where the S3 data, the run, the service log and the outputs go.")
@click.option("--config", default="demo", show_default=True,
              help="Compression config: an embedded name or a YAML path (its teacher is replaced by --teacher).")
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Pretrained generator checkpoint [default: vintagify's G_A2B_epoch33.pth from the installed package].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field (repeatable).")
@click.option("--images", "n_images", type=click.IntRange(1, 50), default=4, show_default=True,
              help="Held-out images to translate.")
@click.option("--budget-ms", type=click.FloatRange(min=1.0), default=150.0, show_default=True,
              help="The realistic latency budget (the second one is an impossible 1 ms).")
@click.option("--serve/--no-serve", "keep_serving", default=False, show_default=True,
              help="Keep the service running at the end (prints its PID and the command that stops it).")
@click.option("--port", type=click.IntRange(1024, 65535), default=None, help="Service port (default: a free one).")
@click.option("--publish-all", is_flag=True, help="Also publish and serve students flagged as no better than a trivial "
              "baseline (e.g. after a shortened run).")
def demo_cli(workdir: Path, config: str, teacher: Path | None, overrides: tuple[str, ...], n_images: int,
             budget_ms: float, keep_serving: bool, port: int | None, publish_all: bool) -> dict:
    """Compress a real pretrained teacher and serve it, end to end (photo -> vintage photo).

    Starts a local S3 (SeaweedFS), compresses the pretrained vintagify CycleGAN teacher (no teacher
    training) into students with 10x and 30x fewer MACs, publishes the teacher and the students that
    beat the trivial baselines, starts the service and rolls the models out one at a time (teacher,
    then the largest student, then the next), translating held-out photos after each roll-out; then
    an impossible budget, and the `best-quality` policy (device class `desktop`) at a tight and a
    generous budget, which select a student and the teacher. Writes input | teacher | each served
    student side by side with MACs, served latency and SSIM to the teacher. The S3 server keeps
    running afterwards (the printed `export` lines reach it; `pocketgan s3 down --dir WORKDIR/s3`
    stops it).
    """
    from compression_jobs.compress_cli import parse_overrides
    from compression_jobs.data import load_samples
    from compression_jobs.pretrained import require_vintagify_teacher
    from registry.client import Registry
    from registry.config import RegistrySettings

    try:
        teacher = teacher or require_vintagify_teacher()
    except FileNotFoundError as exc:
        raise click.ClickException(f"{exc}; or pass --teacher FILE") from exc
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    os.environ.setdefault("BENTOML_HOME", str((workdir / "bentoml").resolve()))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    handle = ensure_s3(workdir / "s3")
    env = {**os.environ, **handle.env(), "POCKETGAN_CACHE_DIR": str(workdir / "cache")}
    os.environ.update(env)
    registry = Registry(RegistrySettings.from_env())

    job, published = compress(config, workdir / "run", registry, teacher, parse_overrides(overrides), publish_all)
    task = job.task
    ids = [p["artifact_id"] for p in published]
    manifests = {aid: registry.get_manifest(aid, task) for aid in ids}
    methods = {aid: m.method for aid, m in manifests.items()}
    teacher_id = next((aid for aid, m in manifests.items() if m.method == "teacher"), None)
    if teacher_id is None:
        raise click.ClickException("the job did not publish its teacher (publish.publish_teacher is false?)")
    students = sorted((a for a in ids if a != teacher_id), key=lambda a: -manifests[a].architecture.macs)
    if not students:
        _say("[compress] no student beat the trivial baselines: only the teacher is served (see the report)")

    samples = load_samples(job.data, "test")[:n_images]
    out_dir = workdir / "outputs"
    results: list[Translation] = []
    columns: list[str] = []
    rollout = [[teacher_id] + students[:k] for k in range(len(students) + 1)]
    promote_set(registry, task, rollout[0])
    from service.launcher import sigterm_unwinds

    with sigterm_unwinds(), Service(env, task, workdir / "service.log", port) as svc:  # SIGTERM stops the server too
        for step, members in enumerate(rollout):
            if step:
                promote_set(registry, task, members)
            wait_for_set(svc.url, task, members)
            _say(f"[translate] roll-out {step + 1}/{len(rollout)}: {len(members)} promoted, budget {budget_ms:g} ms")
            batch = [translate(svc.url, task, s.source, s.name, budget_ms,
                               out_dir / f"rollout-{step + 1}" / f"{Path(s.name).stem}.png", methods) for s in samples]
            results += batch
            if batch[0].artifact_id not in columns:
                columns.append(batch[0].artifact_id)
        _say(f"[translate] impossible budget {IMPOSSIBLE_BUDGET_MS:g} ms")
        results += [translate(svc.url, task, s.source, s.name, IMPOSSIBLE_BUDGET_MS,
                              out_dir / "budget-1ms" / f"{Path(s.name).stem}.png", methods) for s in samples]
        picks = best_quality_picks(svc.url, task, samples[0], results, teacher_id, students, methods, out_dir)
        results += picks
        _report(results, manifests)
        rows, headers, stats, identity = _grid(samples, results, columns, teacher_id, manifests, budget_ms)
        sheet = side_by_side(rows, headers, out_dir / "side_by_side.png")
        summary = out_dir / "summary.json"
        summary.write_text(json.dumps({"task": task, "teacher": str(teacher), "promoted": ids, "methods": methods,
                                       "columns": stats, "identity_ssim_to_teacher_served": identity,
                                       "best_quality": [p.model_dump(mode="json") for p in picks],
                                       "translations": [r.model_dump(mode="json") for r in results]}, indent=2))
        click.echo(f"\noutputs:        {out_dir}")
        click.echo(f"side by side:   {sheet}")
        click.echo(f"summary:        {summary}")
        click.echo(f"quality report: {workdir / 'run' / 'export' / 'report.md'}")
        click.echo(f"service log:    {workdir / 'service.log'}")
        click.echo(f"registry:       pocketgan registry ls --task {task}   (after the export lines below)")
        click.echo(export_lines(handle))  # the secret stays in its 0600 file
        click.echo(f"stop S3 with:   pocketgan s3 down --dir {workdir / 's3'}")
        report = {**json.loads(summary.read_text()), "outputs": str(out_dir), "side_by_side": str(sheet),
                  "summary": str(summary), "service_log": str(workdir / "service.log"), "s3": str(workdir / "s3")}
        if keep_serving:
            pid = svc.pid
            click.echo(f"\nserving on {svc.url} (pid {pid}) — Ctrl-C here, or from another shell: kill -TERM -- -{pid}",
                       )
            svc.wait()
    return report


def _report(results: list[Translation], manifests: dict) -> None:
    click.echo(f"\n{'budget ms':>9}  {'device class (policy)':<24} {'image':<14} {'artifact':<17} {'method':<16} "
               f"{'GMACs@256':>9} {'latency ms':>10}  budget")
    for r in results:
        macs = manifests[r.artifact_id].architecture.macs
        gm = f"{macs / 1e9:.2f}" if macs else "?"
        verdict = "met" if r.budget_met else ("missed (none eligible: fastest served)" if r.no_eligible else "missed")
        who = f"{r.device_class} ({r.policy})"
        click.echo(f"{r.budget_ms:>9g}  {who:<24} {r.image[:14]:<14} {r.artifact_id:<17} {r.method:<16} {gm:>9} "
                   f"{r.latency_ms:>10.1f}  {verdict}")


def _ssim(a: Image.Image, b: Image.Image) -> float:
    """SSIM between two served 8-bit images (the metric the manifests use, on [-1, 1] tensors)."""
    import numpy as np
    import torch

    from compression_jobs.metrics import ssim

    def t(img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]

    return float(ssim(t(a), t(b.resize(a.size, Image.BICUBIC)))[0])


def _grid(samples: list[Sample], results: list[Translation], columns: list[str], teacher_id: str,
          manifests: dict, budget_ms: float) -> tuple[list[list[Image.Image]], list[str], list[dict], float | None]:
    """Rows of input | each served model (teacher first); headers with MACs, served latency, SSIM to the
    teacher; and the input's own SSIM to the teacher (the identity baseline) on these images."""
    served = {(r.image, r.artifact_id): r for r in results
              if r.budget_ms == budget_ms and r.device_class == ROLLOUT_DEVICE_CLASS}
    t_macs = manifests[teacher_id].architecture.macs
    rows = [[s.source] + [Image.open(served[(s.name, aid)].output) for aid in columns] for s in samples]
    headers, stats, identity = ["input (held-out photo)"], [], None
    if teacher_id in columns:  # the input is the identity baseline: what a student must beat
        t = 1 + columns.index(teacher_id)
        identity = sum(_ssim(row[0], row[t]) for row in rows) / len(rows)
        headers[0] += f"\n= identity baseline\nSSIM to teacher {identity:.3f}"
    for c, aid in enumerate(columns):
        m = manifests[aid]
        lat = sorted(served[(s.name, aid)].latency_ms for s in samples)[len(samples) // 2]
        sims = [_ssim(row[1 + c], row[1 + columns.index(teacher_id)]) for row in rows] if teacher_id in columns else []
        ssim_t = sum(sims) / len(sims) if sims else None
        stat = {"artifact_id": aid, "method": m.method, "macs": m.architecture.macs, "served_ms_median": lat,
                "ssim_to_teacher_served": ssim_t, "ssim_to_teacher_heldout": m.quality.ssim_to_teacher}
        stats.append(stat)
        name = "teacher" if aid == teacher_id else f"student {t_macs / m.architecture.macs:.0f}x fewer MACs"
        headers.append(f"{name}\n{m.architecture.macs / 1e9:.2f} GMACs, {lat:.0f} ms served"
                       + ("" if aid == teacher_id or ssim_t is None else f"\nSSIM to teacher {ssim_t:.3f}"))
    return rows, headers, stats, identity
