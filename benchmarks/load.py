"""Load generator for `POST /translate`: real facades label maps, a mix of budgets and device classes.

Bounded twice: it stops at --duration seconds or --max-requests requests, whichever comes first.
Loopback only unless --allow-remote: load is for your own test instance, not someone's server.
Prints the achieved rate, status counts, chosen artifacts, budget outcomes (from the
X-Pocketgan-* headers) and client-side p50/p95/p99; --json writes the same as a JSON report.

    python benchmarks/load.py --url http://127.0.0.1:3000 --duration 30 --max-requests 2000 \\
        --concurrency 4 --device-classes phone-low,desktop --budgets default,20,80,400
"""

from __future__ import annotations

import argparse
import collections
import io
import ipaddress
import itertools
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator

REPO = Path(__file__).resolve().parents[1]
FACADES = REPO / "compression_jobs" / "embedded" / "facades" / "test"


class LoadConfig(BaseModel):
    """What to send, how hard and for how long."""

    url: str = "http://127.0.0.1:3000"
    task: str = "facades-label2photo"
    duration_s: float = Field(10.0, gt=0, le=3600)
    max_requests: int = Field(500, ge=1, le=1_000_000)
    concurrency: int = Field(4, ge=1, le=256)
    device_classes: list[str] = Field(default_factory=lambda: ["phone-low", "phone-high", "desktop"], min_length=1)
    budgets_ms: list[float | None] = Field(default_factory=lambda: [None], min_length=1, description="None = class default")
    image_format: str = Field("jpeg", pattern="^(jpeg|png)$")
    allow_remote: bool = False
    timeout_s: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {v!r}")
        return v.rstrip("/")


class LoadReport(BaseModel):
    """What happened: counts by status/artifact/budget outcome and client-side latency (ms)."""

    url: str
    requests: int
    wall_s: float
    rate_per_s: float
    status: dict[str, int]
    artifacts: dict[str, int]
    budget_met: int
    budget_missed: int
    no_eligible: int
    transport_errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


def is_loopback(url: str) -> bool:
    """True when every address the host resolves to is a loopback address."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def label_maps(fmt: str) -> list[bytes]:
    """The embedded held-out facades label maps (right half of each pair), encoded as `fmt`."""
    from PIL import Image

    files = sorted(FACADES.glob("*.jpg"), key=lambda p: int(p.stem))
    if not files:
        raise FileNotFoundError(f"no facades images in {FACADES}")
    out = []
    for f in files:
        with Image.open(f) as im:
            w, h = im.size
            label = im.convert("RGB").crop((w // 2, 0, w, h))
        buf = io.BytesIO()
        label.save(buf, format=fmt.upper(), **({"quality": 90} if fmt == "jpeg" else {}))
        out.append(buf.getvalue())
    return out


def run_load(cfg: LoadConfig) -> LoadReport:
    """Send requests from `concurrency` threads until the deadline or the request cap."""
    if not cfg.allow_remote and not is_loopback(cfg.url):
        raise ValueError(f"{cfg.url} is not a loopback address; pass --allow-remote to load a remote server")
    images = label_maps(cfg.image_format)
    mime = f"image/{cfg.image_format}"
    mix = itertools.cycle(itertools.product(range(len(images)), cfg.device_classes, cfg.budgets_ms))
    lock = threading.Lock()
    issued = 0
    lat_ms: list[float] = []
    status: collections.Counter[str] = collections.Counter()
    artifacts: collections.Counter[str] = collections.Counter()
    outcome: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + cfg.duration_s

    def worker() -> None:
        nonlocal issued
        with httpx.Client(base_url=cfg.url, timeout=cfg.timeout_s) as client:
            while time.monotonic() < deadline:
                with lock:
                    if issued >= cfg.max_requests:
                        return
                    issued += 1
                    img, dc, budget = next(mix)
                form = {"task": cfg.task, "device_class": dc}
                if budget is not None:
                    form["latency_budget_ms"] = f"{budget:g}"
                t0 = time.perf_counter()
                try:
                    r = client.post("/translate", files={"image": (f"{img}.{cfg.image_format}", images[img], mime)}, data=form)
                except httpx.TransportError as exc:
                    with lock:
                        status[f"transport:{type(exc).__name__}"] += 1
                    continue
                dt = (time.perf_counter() - t0) * 1000.0
                with lock:
                    lat_ms.append(dt)
                    status[str(r.status_code)] += 1
                    if r.status_code == 200:
                        artifacts[r.headers.get("X-Pocketgan-Artifact", "?")] += 1
                        outcome["met" if r.headers.get("X-Pocketgan-Budget-Met") == "true" else "missed"] += 1
                        outcome["no_eligible"] += r.headers.get("X-Pocketgan-No-Eligible") == "true"

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(cfg.concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    pct = (lambda q: float(np.percentile(lat_ms, q))) if lat_ms else (lambda q: None)
    done = sum(status.values())
    return LoadReport(
        url=cfg.url, requests=done, wall_s=wall, rate_per_s=done / wall if wall > 0 else 0.0,
        status=dict(status), artifacts=dict(artifacts), budget_met=outcome["met"], budget_missed=outcome["missed"],
        no_eligible=outcome["no_eligible"], transport_errors=sum(v for k, v in status.items() if k.startswith("transport:")),
        p50_ms=pct(50), p95_ms=pct(95), p99_ms=pct(99),
    )


def _budgets(text: str) -> list[float | None]:
    return [None if b.strip() in ("", "default") else float(b) for b in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:3000")
    ap.add_argument("--task", default="facades-label2photo")
    ap.add_argument("--duration", type=float, default=10.0, help="stop after this many seconds")
    ap.add_argument("--max-requests", type=int, default=500, help="stop after this many requests")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--device-classes", default="phone-low,phone-high,desktop", help="comma-separated, cycled")
    ap.add_argument("--budgets", default="default", help="comma-separated ms, cycled; 'default' = the class budget")
    ap.add_argument("--format", dest="image_format", choices=["jpeg", "png"], default="jpeg")
    ap.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target")
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    a = ap.parse_args(argv)
    try:
        cfg = LoadConfig(
            url=a.url, task=a.task, duration_s=a.duration, max_requests=a.max_requests, concurrency=a.concurrency,
            device_classes=[d for d in a.device_classes.split(",") if d], budgets_ms=_budgets(a.budgets),
            image_format=a.image_format, allow_remote=a.allow_remote,
        )
        report = run_load(cfg)
    except ValidationError as exc:
        print("load: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 2
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    print(f"{report.requests} requests in {report.wall_s:.1f} s = {report.rate_per_s:.1f} req/s "
          f"(concurrency {cfg.concurrency}, target {cfg.url})")
    print("status:    " + ", ".join(f"{k}: {v}" for k, v in sorted(report.status.items())))
    print("artifacts: " + (", ".join(f"{k}: {v}" for k, v in sorted(report.artifacts.items())) or "none"))
    print(f"budget:    met {report.budget_met}, missed {report.budget_missed}, no eligible model {report.no_eligible}")
    print(f"latency (client, ms): p50 {fmt(report.p50_ms)}  p95 {fmt(report.p95_ms)}  p99 {fmt(report.p99_ms)}")
    if a.json:
        a.json.write_text(report.model_dump_json(indent=2))
    return 0 if report.status.get("200") else 1  # nothing succeeded: say so in the exit code


if __name__ == "__main__":
    raise SystemExit(main())
