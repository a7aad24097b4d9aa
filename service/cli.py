"""`pocketgan serve`: run `bentoml serve service.service:PocketGAN` with the right env and args."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

SERVICE_REF = "service.service:PocketGAN"
REPO_ROOT = Path(__file__).resolve().parent.parent


def serve_command(port: int, host: str) -> list[str]:
    """The bentoml command line (the `bentoml` next to this interpreter, else `python -m bentoml`)."""
    exe = Path(sys.executable).parent / "bentoml"
    base = [str(exe)] if exe.is_file() else [sys.executable, "-m", "bentoml"]
    return [*base, "serve", SERVICE_REF, "--port", str(port), "--host", host]


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def malloc_tunables(current: str | None) -> str:
    """`GLIBC_TUNABLES` for a serving process: the caller's, plus transparent huge pages for malloc.

    Why: our ONNX Runtime sessions run without ORT's arena (registry/runtime.py), so every run
    mallocs its intermediate buffer (~11 MB for a small student at 256x256). In about a third to a
    half of all processes glibc hands that buffer out freshly mapped on every run, and the run pays
    ~1,000 page faults (+2-3 ms of CPU per image, 5-8 % of the throughput); which processes do is
    decided at start-up. With malloc's memory advised for huge pages the same buffer is ~6 faults.
    Measured on 2 cores, C=16 (README "Service performance: page faults"): no worker of 10 with
    more than 246 faults per image, 56.5-58.7 img/s, against 54.9-58.2 img/s with the draw left to
    chance. glibc before 2.35 ignores the setting; with THP off (`never`) it does nothing (the
    worker warns: `huge_page_malloc_warning`).
    A `glibc.malloc.hugetlb` the caller set is kept as it is.
    """
    parts = [p for p in (current or "").split(":") if p]
    if any(p.split("=", 1)[0] == "glibc.malloc.hugetlb" for p in parts):
        return ":".join(parts)
    return ":".join([*parts, HUGE_PAGES_TUNABLE])


THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_page_malloc_warning(tunables: str | None, thp_enabled: Path = THP_ENABLED) -> str | None:
    """Why a worker should warn at start-up: `malloc_tunables` asked for huge pages but the host's THP mode
    is `never`, so the per-run buffers may be page-faulted afresh every run (a node image setting the
    service cannot change). None when huge pages were not asked for, or the mode cannot be read."""
    if HUGE_PAGES_TUNABLE not in (tunables or "").split(":"):
        return None
    try:
        text = thp_enabled.read_text()
    except OSError:
        return None
    if "[never]" not in text:
        return None
    return (f"GLIBC_TUNABLES asks for {HUGE_PAGES_TUNABLE} but transparent huge pages are off on this host "
            f"({thp_enabled}: {text.strip()}): each ONNX Runtime run may pay ~1,000 page faults (+2-3 ms of CPU "
            "per 256x256 image); set THP to madvise or always on the node (README \"Service performance: page faults\")")


def serve_env(
    base: dict[str, str], *, workers: int | None, tasks: tuple[str, ...], channel: str | None,
    hardware_tag: str | None, poll_interval_s: float | None, max_concurrency: int | None, timeout_s: float | None,
) -> dict[str, str]:
    """The environment for the service: POCKETGAN_SERVICE_* from the options, tracking off, malloc tuned."""
    env = dict(base)
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    env["GLIBC_TUNABLES"] = malloc_tunables(env.get("GLIBC_TUNABLES"))
    if workers is not None:
        env["POCKETGAN_SERVICE_WORKERS"] = str(workers)
    if tasks:
        env["POCKETGAN_SERVICE_TASKS"] = json.dumps(list(tasks))
    if channel:
        env["POCKETGAN_SERVICE_CHANNEL"] = channel
    if hardware_tag:
        env["POCKETGAN_SERVICE_HARDWARE_TAG"] = hardware_tag
    if poll_interval_s is not None:
        env["POCKETGAN_SERVICE_POLL_INTERVAL_S"] = str(poll_interval_s)
    if max_concurrency is not None:
        env["POCKETGAN_SERVICE_MAX_CONCURRENCY"] = str(max_concurrency)
    if timeout_s is not None:
        env["POCKETGAN_SERVICE_TIMEOUT_S"] = str(timeout_s)
    return env


@click.command("serve")
@click.option("--port", type=int, default=3000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to listen on all interfaces")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="worker processes (default 1)")
@click.option("--tasks", "tasks", multiple=True, help="task to serve (repeatable); default from settings")
@click.option("--channel", default=None, help="alias channel to follow (default production)")
@click.option("--hardware-tag", default=None, help="profile tag for this machine (default: detect)")
@click.option("--poll-interval", "poll_interval_s", type=click.FloatRange(min=0.1), default=None, help="alias poll seconds")
@click.option("--max-concurrency", type=click.IntRange(1), default=None, help="in-flight requests before 429")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=None, help="seconds before 504")
@click.option("--json", "as_json", is_flag=True,
              help="Print where it serves as one JSON line on stdout; the server's own log goes to stderr.")
def serve_cli(
    port: int, host: str, workers: int | None, tasks: tuple[str, ...], channel: str | None, hardware_tag: str | None,
    poll_interval_s: float | None, max_concurrency: int | None, timeout_s: float | None, as_json: bool = False,
) -> None:
    """Run the translation service against the registry in POCKETGAN_REGISTRY (Ctrl-C stops it)."""
    from registry.names import validate_name

    for t in tasks:
        validate_name(t, "task")
    env = serve_env(
        dict(os.environ), workers=workers, tasks=tasks, channel=channel, hardware_tag=hardware_tag,
        poll_interval_s=poll_interval_s, max_concurrency=max_concurrency, timeout_s=timeout_s,
    )
    cmd = serve_command(port, host)
    url = f"http://{host}:{port}"
    click.echo(f"serving on {url} (docs: /docs.json, metrics: /metrics)", err=True)
    if as_json:  # before the (long-running) server starts, so a script can read it at once
        click.echo(json.dumps({"url": url, "docs": f"{url}/docs.json", "metrics": f"{url}/metrics",
                               "readyz": f"{url}/readyz", "pid": os.getpid()}), nl=True)
        sys.stdout.flush()
    try:
        rc = subprocess.call(cmd, env=env, cwd=REPO_ROOT, stdout=sys.stderr if as_json else None)
    except KeyboardInterrupt:
        rc = 130
    raise SystemExit(rc)
