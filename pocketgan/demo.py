"""`pocketgan demo`: the whole flow on the embedded facades subset, in one command.

local S3 -> compression job (train teacher, distil, supernet, search, fine-tune, export, publish)
-> promote -> `bentoml serve` -> translate held-out images over HTTP under two budgets
-> a side-by-side PNG (input | teacher | served student | ground truth).

Everything lives under one work dir; a re-run reuses the S3 server, the completed stages and the
published artifacts, so only the serving part runs again. This module is the top-level glue, so it
is the one place allowed to use both `compression_jobs` and `service` (the latter only as a
subprocess speaking HTTP, like any client).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
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
    from registry.runtime import OnnxGenerator

CHANNEL = "production"
IMPOSSIBLE_BUDGET_MS = 1.0  # below anything a generator can do here: shows the no-eligible path


class Translation(BaseModel):
    """One image served by the service, as the client saw it."""

    image: str
    budget_ms: float
    artifact_id: str
    method: str
    latency_ms: float
    budget_met: bool
    no_eligible: bool
    output: Path


def _say(msg: str) -> None:
    click.secho(msg, fg="cyan", err=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def compress(config: str, run_dir: Path, registry: Registry) -> tuple[JobConfig, list[dict]]:
    """Run (or resume) the compression job; returns its config and what its publish stage published."""
    from compression_jobs.gan_compression.config import load_config
    from compression_jobs.pipeline import Context, run_pipeline

    job = load_config(config)
    _say(f"[compress] config {config!r} -> {run_dir} (completed stages are reused)")
    t0 = time.perf_counter()
    run_pipeline(Context(job, run_dir, registry=registry), resume=True, echo=lambda m: _say(f"[compress] {m}"))
    _say(f"[compress] done in {time.perf_counter() - t0:.0f} s")
    published = json.loads((run_dir / "publish" / "published.json").read_text())
    if not published:
        raise click.ClickException(f"the job in {run_dir} published nothing (publish.enabled is false?)")
    return job, published


def promote_all(registry: Registry, task: str, published: list[dict]) -> list[str]:
    """Promote every published artifact to the production channel, unless it already is that set."""
    ids = [p["artifact_id"] for p in published]
    from registry.errors import NotFound

    try:
        current = registry.read_alias(task, CHANNEL)
    except NotFound:
        current = None
    if current is not None and sorted(current.alias.artifacts) == sorted(ids):
        _say(f"[promote] {task}/{CHANNEL} already holds these {len(ids)} artifacts (revision {current.alias.revision})")
        return ids
    alias = registry.promote(task, CHANNEL, ids, reason="pocketgan demo")
    _say(f"[promote] {task}/{CHANNEL} -> revision {alias.revision}: {', '.join(ids)}")
    return ids


class Service:
    """`pocketgan serve` as a child process, for as long as the `with` block runs."""

    def __init__(self, env: dict[str, str], task: str, log: Path, port: int | None = None) -> None:
        from service.cli import REPO_ROOT, serve_command, serve_env

        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._cmd = serve_command(self.port, "127.0.0.1")
        self._cwd = REPO_ROOT
        self._env = serve_env(env, workers=1, tasks=(task,), channel=CHANNEL, hardware_tag=None,
                              poll_interval_s=2.0, max_concurrency=None, timeout_s=None)
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "Service":
        _say(f"[serve] starting bentoml serve on {self.url} (log: {self.log})")
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(self._cmd, env=self._env, cwd=self._cwd, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(timeout_s=300.0)
        except BaseException:  # __exit__ does not run when __enter__ fails: stop the server here
            self.__exit__()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise click.ClickException(f"the service exited with code {self._proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    _say("[serve] ready (models loaded and warmed up)")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise click.ClickException(f"the service was not ready after {timeout_s:.0f} s; see {self.log}")

    def wait(self) -> None:
        """Block until Ctrl-C or the service exits."""
        try:
            self._proc.wait()
        except KeyboardInterrupt:
            pass

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, 15)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait()


def translate(url: str, task: str, img: Image.Image, name: str, budget_ms: float, out: Path,
              methods: dict[str, str]) -> Translation:
    """POST one image to /translate exactly as a mobile client would (multipart form)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    resp = httpx.post(
        f"{url}/translate",
        data={"task": task, "device_class": "phone-high", "latency_budget_ms": str(budget_ms), "output_format": "png"},
        files={"image": (name, buf.getvalue(), "image/png")},
        timeout=120.0,
    )
    if resp.status_code != 200:
        raise click.ClickException(f"/translate answered {resp.status_code}: {resp.text[:300]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(resp.content)
    h = resp.headers
    aid = h["X-Pocketgan-Artifact"]
    return Translation(
        image=name, budget_ms=budget_ms, artifact_id=aid, method=methods.get(aid, "?"),
        latency_ms=float(h.get("X-Pocketgan-Actual-Ms", "nan")),
        budget_met=h.get("X-Pocketgan-Budget-Met") == "true",
        no_eligible=h.get("X-Pocketgan-No-Eligible") == "true", output=out,
    )


def side_by_side(rows: list[list[Image.Image]], headers: list[str], path: Path, cell: int = 192) -> Path:
    """One PNG grid: a labelled column per header, one row per held-out image."""
    pad, top = 4, 20
    width = len(headers) * (cell + pad) + pad
    height = top + len(rows) * (cell + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(headers):
        draw.text((pad + c * (cell + pad) + 2, 4), text, fill="black")
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
              help="Compression config: an embedded name (demo, tiny, small, full) or a YAML path.")
@click.option("--images", "n_images", type=click.IntRange(1, 50), default=4, show_default=True,
              help="Held-out images to translate.")
@click.option("--budget-ms", type=click.FloatRange(min=1.0), default=150.0, show_default=True,
              help="The realistic latency budget (the second one is an impossible 1 ms).")
@click.option("--serve/--no-serve", "keep_serving", default=False, show_default=True,
              help="Keep the service running at the end (Ctrl-C stops it).")
@click.option("--port", type=click.IntRange(1024, 65535), default=None, help="Service port (default: a free one).")
def demo_cli(workdir: Path, config: str, n_images: int, budget_ms: float, keep_serving: bool, port: int | None) -> dict:
    """Run the whole flow end to end on the embedded facades images (label map -> photo).

    Starts a local S3 (SeaweedFS), runs a small GAN Compression job, publishes the teacher and the
    chosen students, promotes them, starts the service, translates held-out images under a realistic
    and an impossible latency budget, and writes input | teacher | served student | ground truth
    side by side. The S3 server keeps running afterwards so you can explore the registry with the
    printed `export` lines (`pocketgan s3 down --dir WORKDIR/s3` stops it).
    """
    from compression_jobs.data import load_samples
    from registry.client import Registry
    from registry.config import RegistrySettings
    from registry.runtime import OnnxGenerator

    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    os.environ.setdefault("BENTOML_HOME", str((workdir / "bentoml").resolve()))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    handle = ensure_s3(workdir / "s3")
    env = {**os.environ, **handle.env(), "POCKETGAN_CACHE_DIR": str(workdir / "cache")}
    os.environ.update(env)
    registry = Registry(RegistrySettings.from_env())

    job, published = compress(config, workdir / "run", registry)
    task = job.task
    ids = promote_all(registry, task, published)
    manifests = {aid: registry.get_manifest(aid, task) for aid in ids}
    methods = {aid: m.method for aid, m in manifests.items()}
    teacher_id = next((aid for aid, m in manifests.items() if m.method == "teacher"), None)

    samples = load_samples(job.data, "test")[:n_images]
    out_dir = workdir / "outputs"
    results: list[Translation] = []
    with Service(env, task, workdir / "service.log", port) as svc:
        for budget in (budget_ms, IMPOSSIBLE_BUDGET_MS):
            for s in samples:
                stem = Path(s.name).stem
                results.append(translate(svc.url, task, s.source, s.name, budget,
                                         out_dir / f"budget-{budget:g}ms" / f"{stem}.png", methods))
        _report(results, manifests)
        teacher = OnnxGenerator(registry.pull(teacher_id, task) / "model.onnx") if teacher_id else None
        rows, headers = _grid(samples, results, budget_ms, teacher)
        sheet = side_by_side(rows, headers, out_dir / "side_by_side.png")
        summary = out_dir / "summary.json"
        summary.write_text(json.dumps({"task": task, "promoted": ids, "methods": methods,
                                       "translations": [r.model_dump(mode="json") for r in results]}, indent=2))
        click.echo(f"\noutputs:        {out_dir}")
        click.echo(f"side by side:   {sheet}")
        click.echo(f"summary:        {summary}")
        click.echo(f"service log:    {workdir / 'service.log'}")
        click.echo(f"registry:       pocketgan registry ls --task {task}   (after the export lines below)")
        click.echo(export_lines(handle))  # the secret stays in its 0600 file
        click.echo(f"stop S3 with:   pocketgan s3 down --dir {workdir / 's3'}")
        report = {**json.loads(summary.read_text()), "outputs": str(out_dir), "side_by_side": str(sheet),
                  "summary": str(summary), "service_log": str(workdir / "service.log"), "s3": str(workdir / "s3")}
        if keep_serving:
            click.echo(f"\nserving on {svc.url} — Ctrl-C to stop")
            svc.wait()
    return report


def _report(results: list[Translation], manifests: dict) -> None:
    click.echo(f"\n{'budget ms':>9}  {'image':<14} {'artifact':<17} {'method':<16} {'GMACs@256':>9} "
               f"{'latency ms':>10}  budget")
    for r in results:
        macs = manifests[r.artifact_id].architecture.macs
        gm = f"{macs / 1e9:.2f}" if macs else "?"
        verdict = "met" if r.budget_met else ("missed (none eligible: fastest served)" if r.no_eligible else "missed")
        click.echo(f"{r.budget_ms:>9g}  {r.image[:14]:<14} {r.artifact_id:<17} {r.method:<16} {gm:>9} "
                   f"{r.latency_ms:>10.1f}  {verdict}")


def _grid(samples: list[Sample], results: list[Translation], budget_ms: float,
          teacher: OnnxGenerator | None) -> tuple[list[list[Image.Image]], list[str]]:
    """Rows of input | teacher | student served under the realistic budget | ground truth."""
    served = {r.image: r for r in results if r.budget_ms == budget_ms}
    rows = []
    for s in samples:
        r = served[s.name]
        row = [s.source]
        if teacher is not None:
            row.append(teacher.translate(s.source))
        row.append(Image.open(r.output))
        if s.target is not None:
            row.append(s.target)
        rows.append(row)
    chosen = served[samples[0].name]
    headers = ["input"] + (["teacher"] if teacher else []) + [f"served ({chosen.method}, {budget_ms:g} ms)"]
    if samples[0].target is not None:
        headers.append("ground truth")
    return rows, headers
