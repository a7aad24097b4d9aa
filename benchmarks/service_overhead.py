"""Service overhead: raw ONNX Runtime in-process vs `POST /translate` over loopback HTTP.

Same model (a mobile-ResNet student with random weights, exported by compression_jobs), same
images (real facades photos, 256x256 JPEG), one run, modes interleaved round by round (the CPU
may be shared: read the ratios, not the absolute times):

1. raw ORT, old definition: `OnnxGenerator.run` with ORT's default intra-op threads, C client
   threads calling one session at once (what the first measurement of issue 14 compared with);
2. raw ORT, same thread budget as the service layout: the layout's intra-op threads, at most
   WORKERS x INFERENCE_THREADS runs at once (a semaphore), C client threads;
3. the full pipeline in-process (decode -> preprocess -> run -> postprocess -> encode), same budget;
4. HTTP, old layout: `bentoml serve` with 1 worker, INFERENCE_THREADS 16, ORT's default intra-op
   threads (the layout issue 14 measured);
5. HTTP, new layout (README "Service performance": workers x inference threads x intra-op
   threads = cores): --workers, --inference-threads (default cores / workers), --threads (default 1);
   `--layout WxIxT` (repeatable) serves further layouts side by side (e.g. 1x2x1 2x1x1 2x2x1).

The HTTP load generator is meant to cost little next to the server, since both share the cores:
each request body (multipart, one of the images) is encoded once before the run; by default one
asyncio (uvloop) loop drives C keep-alive connections (`--client asyncio`); `--client keepalive`
uses C threads with one persistent `http.client` connection each (the previous default: its threads
cost ~1 ms of CPU per request at C=16), `--client httpx` the first version's
`httpx.Client.post(files=...)`, re-encoding every body. The benchmark process's own CPU per request
is printed for every mode (for HTTP modes: the load generator's cost).

for C in 1, 4, 16: p50/p95/p99 latency, throughput, CPU and minor page faults per image; then both
ratios (old definition: HTTP vs mode 1; new: HTTP vs mode 2) for every layout, side by side, pooled
over the rounds and as the median (min-max) of each round's HTTP / raw pair. Page faults tell which
draw each side made: without ORT's arena every run mallocs its intermediate buffer, and per process
glibc either keeps that memory (~0 faults) or maps it afresh every run (~1,000 faults at 256x256,
+2-3 ms of CPU per image): a run where one side faults and the other does not moves the ratio by
~0.07 (README "Benchmarks"). Both sides run with the servers' GLIBC_TUNABLES (huge pages for malloc,
service.cli.malloc_tunables), which makes a fresh buffer a few faults; `GLIBC_TUNABLES=glibc.malloc.hugetlb=0`
measures both without. Then a promotion under load (C=4,
new layout): zero failed requests expected, p99 during the swap window reported. Also the
selection function's decision time. Bounded: --requests per level and mode (split over
--rounds), --max-seconds per level and mode.

    python benchmarks/service_overhead.py [--requests 120] [--rounds 2] [--max-seconds 20] [--side 256]
        [--layout 1x2x1 --layout 2x1x1] [--client asyncio|keepalive|httpx] [--no-old]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import http.client
import io
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.launcher import ServiceProcess

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TASK = "facades-label2photo"
TAG = "bench-cpu"


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def run_level(fn, conc: int, n: int, max_s: float) -> tuple[list[float], float, int]:
    """Call fn() n times from `conc` threads; (latencies ms, throughput/s, failures)."""
    lat: list[float] = []
    fails = 0
    lock = threading.Lock()
    counter = iter(range(n))
    deadline = time.monotonic() + max_s

    def worker() -> None:
        nonlocal fails
        while time.monotonic() < deadline:
            with lock:
                if next(counter, None) is None:
                    return
            t0 = time.perf_counter()
            ok = fn()
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                lat.append(dt)
                fails += 0 if ok else 1

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(conc) as ex:
        for f in [ex.submit(worker) for _ in range(conc)]:
            f.result()
    wall = time.perf_counter() - t0
    return lat, len(lat) / wall, fails


def facades_jpegs(side: int, count: int = 8) -> list[bytes]:
    from PIL import Image

    src = Path("/work/shared/data/facades/test")
    files = sorted(src.glob("*.jpg"))[:count]
    out = []
    for f in files:
        img = Image.open(f).convert("RGB")
        w, h = img.size
        photo = img.crop((0, 0, w // 2, h)).resize((side, side))
        buf = io.BytesIO()
        photo.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    if not out:
        raise SystemExit(f"no facades images under {src}")
    return out


def export_student(out: Path, config: str, seed: int) -> str:
    import torch

    from compression_jobs.export import export_artifact
    from compression_jobs.models.mobile import mobile_resnet_generator

    torch.manual_seed(seed)
    model = mobile_resnet_generator(config).eval()
    return export_artifact(model, out, task=TASK, method="gan-compression").artifact_id


def start_server(tmp: Path, name: str, base_env: dict[str, str], layout: dict[str, str]) -> "ServiceProcess":
    """`bentoml serve` with one thread layout (service.launcher); returns once /readyz is 200."""
    from service.launcher import ServiceProcess, ServiceStartError

    env = dict(base_env)
    env.update({"POCKETGAN_CACHE_DIR": str(tmp / f"svc-cache-{name}"), "BENTOML_HOME": str(tmp / f"bentoml-{name}")})
    env.update(layout)
    server = ServiceProcess(env, tmp / f"bentoml-{name}.log", cwd=REPO).start()
    try:
        server.wait_for("/readyz", 180)
    except ServiceStartError as exc:
        server.stop()
        raise SystemExit(f"service {name}: {exc}") from exc
    return server


Level = tuple[list[float], float, int]


def group_usage(root: int) -> tuple[float, int]:
    """(user + system CPU seconds, minor page faults) of a live process and all its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, int, int]] = {}  # pid -> (ppid, utime + stime ticks, minor faults)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        procs[int(d)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[7]))  # ppid; utime + stime; minflt
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, _) in procs.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    live = [procs[p] for p in tree if p in procs]
    return sum(p[1] for p in live) / tick, sum(p[2] for p in live)


def own_minflt() -> int:
    """Minor page faults of this process so far (the raw modes' ORT runs, and the load generator's)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def sessions_of(root: int) -> int:
    """Distinct sessions (Linux scheduler autogroups) among a process's descendants that run requests.

    BentoML starts each worker in its own session; with `kernel.sched_autogroup_enabled` = 1 the
    kernel shares a contended CPU between sessions first, so N workers get N shares against other
    jobs where this benchmark's raw modes get one: multi-worker wall-clock ratios on a shared
    machine are inflated by that, CPU per image is not."""
    sids: dict[int, tuple[int, int]] = {}  # pid -> (ppid, sid)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            sids[int(d)] = (int(fields[1]), int(fields[3]))
    workers = [pid for pid, (ppid, _) in sids.items() if ppid == root]
    return len({sids[p][1] for p in workers}) or 1


def autogroups_enabled() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def merge(parts: list[Level]) -> Level:
    """Pool rounds: all latencies, throughput = requests / summed wall time, failures summed."""
    lat = [x for p in parts for x in p[0]]
    wall = sum(len(p[0]) / p[1] for p in parts if p[1] > 0)
    return lat, (len(lat) / wall if wall else float("nan")), sum(p[2] for p in parts)


def round_ratios(http: list[Level], raw: list[Level]) -> list[float]:
    """Throughput ratio of each round's HTTP level to the same round's raw level (run seconds apart).

    A pause of the shared CPU hits one round of one mode; the median of these paired ratios is
    what the service costs, the pooled ratio also carries where the pauses fell."""
    return [h[1] / r[1] for h, r in zip(http, raw, strict=True) if r[1] > 0]


def parse_layout(text: str) -> tuple[int, int, int]:
    """"2x1x1" -> (workers, inference threads, intra-op threads)."""
    try:
        w, i, t = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"layout is WORKERSxINFERENCE_THREADSxINTRA_OP_THREADS, got {text!r}") from None
    if min(w, i, t) < 1:
        raise argparse.ArgumentTypeError(f"layout parts must be >= 1, got {text!r}")
    return w, i, t


def multipart_body(image: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    """One request body, encoded once by httpx (body bytes, content type with its boundary)."""
    import httpx

    req = httpx.Request("POST", "http://x/translate", files={"image": ("x.jpg", image, "image/jpeg")}, data=fields)
    return req.read(), req.headers["content-type"]


class KeepAliveClient:
    """POST pre-encoded bodies over one persistent HTTP/1.1 connection (one per client thread)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=60)

    def post(self, path: str, body: bytes, ctype: str) -> tuple[int, dict[str, str]]:
        """(status, lower-cased headers); reconnects and retries once when the connection was closed."""
        for attempt in (0, 1):
            try:
                self.conn.request("POST", path, body=body, headers={"Content-Type": ctype})
                r = self.conn.getresponse()
                r.read()
                if r.will_close:
                    self.conn.close()
                return r.status, {k.lower(): v for k, v in r.getheaders()}
            except (OSError, http.client.HTTPException):
                self.conn.close()  # http.client reconnects on the next request
                if attempt:
                    raise
        raise AssertionError("unreachable")


class AsyncLoadGenerator:
    """C keep-alive connections driven by one asyncio (uvloop) loop in the calling thread.

    The cheapest load generator we have: no client threads waking one another and taking the GIL in
    turn (the keep-alive client's 16 threads cost ~1 ms of CPU per request at C=16, on the cores the
    server needs). Requests are pre-encoded bytes; responses are read by Content-Length."""

    def __init__(self, host: str, port: int, bodies: list[tuple[bytes, str]]) -> None:
        self.host, self.port = host, port
        self.requests = [
            f"POST /translate HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            for body, ctype in bodies
        ]

    def level(self, conc: int, n: int, max_s: float, record) -> "Level":
        """Like run_level for HTTP: n requests from `conc` connections; record(t0, ms, status, headers) each."""
        import uvloop

        return uvloop.run(self._level(conc, n, max_s, record))

    async def _exchange(self, conn: list, index: int) -> tuple[int, dict[str, str]]:
        async with asyncio.timeout(60):
            if not conn:
                conn.extend(await asyncio.open_connection(self.host, self.port))
            reader, writer = conn
            writer.write(self.requests[index])
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            writer.close()
            conn.clear()
        return int(lines[0].split(" ", 2)[1]), headers

    async def _level(self, conc: int, n: int, max_s: float, record) -> "Level":
        lat: list[float] = []
        fails = 0
        todo = iter(range(n))
        deadline = time.monotonic() + max_s

        async def connection() -> None:
            nonlocal fails
            conn: list = []
            for i in todo:  # one iterator for all connections: each request is sent once
                if time.monotonic() >= deadline:
                    break
                t0 = time.perf_counter()
                try:
                    status, headers = await self._exchange(conn, i % len(self.requests))
                except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    status, headers = 0, {}
                    if conn:
                        conn[1].close()
                        conn.clear()
                ms = (time.perf_counter() - t0) * 1000
                lat.append(ms)
                fails += status != 200
                record(t0, ms, status, headers)
            if conn:
                conn[1].close()

        t0 = time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(conc)))
        return lat, len(lat) / (time.perf_counter() - t0), fails


def same_malloc_as_the_servers() -> None:
    """Re-run this process with the GLIBC_TUNABLES the servers get (service.cli.malloc_tunables), so
    raw ORT and the pipeline run under the same malloc as the service (glibc reads it only at start-up).
    `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` measures both sides without huge pages."""
    from service.cli import malloc_tunables

    want = malloc_tunables(os.environ.get("GLIBC_TUNABLES"))
    if os.environ.get("GLIBC_TUNABLES") != want:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": want})


def main() -> None:
    from service.launcher import exit_on_sigterm

    same_malloc_as_the_servers()
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=120, help="requests per level and mode (split over rounds)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (order reversed every other round)")
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1, help="new layout: worker processes")
    ap.add_argument("--threads", type=int, default=1, help="new layout: ORT intra-op threads per session")
    ap.add_argument("--inference-threads", type=int, default=None,
                    help="new layout: jobs at once per worker (default: cores / (workers x threads))")
    ap.add_argument("--layout", type=parse_layout, action="append", default=[],
                    help="a further HTTP layout WORKERSxINFERENCE_THREADSxINTRA_OP_THREADS (repeatable)")
    ap.add_argument("--old-inference-threads", type=int, default=16, help="old layout: jobs at once (ORT default threads)")
    ap.add_argument("--no-old", action="store_true", help="skip the old layout and the old-definition raw mode")
    ap.add_argument("--client", choices=("asyncio", "keepalive", "httpx"), default="asyncio",
                    help="HTTP load generator: one asyncio loop driving C keep-alive connections (pre-encoded bodies), "
                         "C threads with one keep-alive http.client connection each, or httpx re-encoding each body")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--no-swap", action="store_true", help="skip the promotion-under-load part")
    args = ap.parse_args()

    import httpx
    import onnxruntime as ort

    from registry.client import Registry
    from registry.config import RegistrySettings
    from registry.local_s3 import start_local_s3, stop
    from registry.manifest import HardwareProfile, LatencyMeasurement
    from registry.runtime import OnnxGenerator, image_to_tensor, tensor_to_image
    from service.images import decode_image, encode_image
    from service.launcher import ServiceProcess
    from service.selection import Candidate, Observed, SelectionRequest, select

    cores = os.cpu_count() or 1
    inf_threads = args.inference_threads or max(1, cores // (args.workers * args.threads))
    budget = args.workers * inf_threads  # runs at once in the new layout
    layouts: dict[str, tuple[int, int, int]] = {"new": (args.workers, inf_threads, args.threads)}
    for w, i, t in args.layout:
        layouts.setdefault(f"{w}x{i}x{t}", (w, i, t))
    if not args.no_old:
        layouts = {"old": (1, args.old_inference_threads, 0), **layouts}  # 0: ORT's default intra-op threads
    tmp = Path(tempfile.mkdtemp(prefix="pocketgan-bench-"))
    images = facades_jpegs(args.side)
    print(f"# pocketgan service overhead  (cpu cores: {cores}, image {args.side}x{args.side} JPEG, ORT {ort.__version__}, "
          f"HTTP client: {args.client}; GLIBC_TUNABLES {os.environ.get('GLIBC_TUNABLES')} on both sides)")
    print("# layouts (workers x INFERENCE_THREADS x INTRA_OP_THREADS; 0 = ORT's default): "
          + ", ".join(f"{k} {w}x{i}x{t}" for k, (w, i, t) in layouts.items())
          + f"; raw same budget: <= {budget} runs at once x {args.threads} thread(s)")

    a_id = export_student(tmp / "a", "16_16_32_16_32_32_16_16", 0)
    b_id = export_student(tmp / "b", "16_16_32_24_24_24_16_16", 1)
    gen_old = OnnxGenerator(tmp / "a" / "model.onnx")
    gen_new = OnnxGenerator(tmp / "a" / "model.onnx", intra_op_threads=args.threads)
    for g in (gen_old, gen_new):
        g.warm_up(args.side, args.side, runs=3)
    x, _ = image_to_tensor(decode_image(images[0], max_pixels=1 << 24).image, size_multiple=gen_new.size_multiple)

    # -- 0. selection decision time
    cands = [Candidate(artifact_id=f"{i:016x}", macs=i * 1000, total_bytes=i,
                       measurements=[LatencyMeasurement(height=256, width=256, runs=5, p50_ms=i, p95_ms=i, p99_ms=i,
                                                        throughput_ips=1)]) for i in range(1, 5)]
    obs = {c.artifact_id: Observed(count=10, p95_ratio=1.5) for c in cands}
    req = SelectionRequest(task=TASK, hardware_tag=TAG, budget_ms=2.5, height=256, width=256)
    t0 = time.perf_counter()
    for _ in range(2000):
        select(cands, obs, req)
    print(f"selection decision time (4 candidates): {(time.perf_counter() - t0) / 2000 * 1e6:.1f} us")

    # -- in-process modes; the same-budget ones queue FIFO for `budget` job threads (like the service's lane)
    lane = cf.ThreadPoolExecutor(budget)

    def raw_old() -> bool:
        gen_old.run(x)
        return True

    def raw_new() -> bool:
        lane.submit(gen_new.run, x).result()
        return True

    def pipeline_job(data: bytes) -> None:
        d = decode_image(data, max_pixels=1 << 24)
        t, _ = image_to_tensor(d.image, size_multiple=gen_new.size_multiple)
        encode_image(tensor_to_image(gen_new.run(t), d.output_size), "jpeg")

    def pipeline(i=[0]) -> bool:  # noqa: B006 - cheap round-robin over images
        i[0] += 1
        lane.submit(pipeline_job, images[i[0] % len(images)]).result()
        return True

    # profile measured right here (same machine, same session settings) so selection has data
    lat1, tput1, _ = run_level(raw_new, 1, 20, 10)
    prof = HardwareProfile(
        hardware_tag=TAG, runtime_version=ort.__version__, threads=args.threads,
        measurements=[LatencyMeasurement(height=args.side, width=args.side, runs=len(lat1), p50_ms=pct(lat1, 50),
                                         p95_ms=pct(lat1, 95), p99_ms=max(pct(lat1, 99), pct(lat1, 95)),
                                         throughput_ips=tput1)],
    )

    fields = {"task": TASK, "device_class": "desktop", "latency_budget_ms": "60000"}
    bodies = [multipart_body(img, fields) for img in images]  # encoded once (keepalive client)
    s3 = start_local_s3(tmp / "s3", bucket="bench")
    servers: dict[str, ServiceProcess] = {}
    raw_modes = (["raw_old"] if not args.no_old else []) + ["raw", "pipeline"]
    modes = raw_modes + [f"http_{k}" for k in layouts]
    parts: dict[str, dict[int, list[Level]]] = {m: {c: [] for c in args.concurrency} for m in modes}
    server_ms: dict[tuple[str, int], list[float]] = {}  # (mode, C) -> X-Pocketgan-Actual-Ms
    cpu_s = {m: {c: 0.0 for c in args.concurrency} for m in modes}  # CPU seconds: raw: this process; HTTP: server's
    client_cpu_s = {m: {c: 0.0 for c in args.concurrency} for m in modes}  # this process's CPU seconds
    faults = {m: {c: 0 for c in args.concurrency} for m in modes}  # minor page faults: raw: this process; HTTP: server's
    try:
        settings = RegistrySettings(registry="s3://bench/r", s3_endpoint=s3.endpoint, region=s3.region,
                                    cache_dir=tmp / "cache", access_key_id=s3.access_key,
                                    secret_access_key=s3.secret_key, actor="bench")
        reg = Registry(settings)
        for d, aid in ((tmp / "a", a_id), (tmp / "b", b_id)):
            reg.publish_dir(d)
            reg.add_profile(aid, prof, task=TASK)
        reg.promote(TASK, "production", [a_id], actor="bench")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POCKETGAN_"))}
        env.update(s3.env())
        env.update({
            "POCKETGAN_REGISTRY": "s3://bench/r", "BENTOML_DO_NOT_TRACK": "True",
            "AWS_CONFIG_FILE": str(tmp / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"),
            "POCKETGAN_SERVICE_TASKS": json.dumps([TASK]), "POCKETGAN_SERVICE_HARDWARE_TAG": TAG,
            "POCKETGAN_SERVICE_POLL_INTERVAL_S": "1", "POCKETGAN_SERVICE_MAX_CONCURRENCY": "256",
            "POCKETGAN_SERVICE_WARMUP_SIZE": str(args.side),
        })
        for name, (w, i, t) in layouts.items():
            layout_env = {"POCKETGAN_SERVICE_WORKERS": str(w), "POCKETGAN_SERVICE_INFERENCE_THREADS": str(i)}
            if t:
                layout_env["POCKETGAN_SERVICE_INTRA_OP_THREADS"] = str(t)
            else:  # ORT's default: null, which only the YAML file can say
                (tmp / f"{name}.yaml").write_text("intra_op_threads: null\n")
                layout_env["POCKETGAN_SERVICE_CONFIG"] = str(tmp / f"{name}.yaml")
            servers[name] = start_server(tmp, name, env, layout_env)

        local = threading.local()
        served: list[tuple[float, float, int, str]] = []  # (start, ms, status, artifact)
        level: list[tuple[str, int] | None] = [None]
        served_lock = threading.Lock()

        def http_to(layout: str):
            url = servers[layout].url
            host, port = servers[layout].host, servers[layout].port

            def send(k: int) -> tuple[int, dict[str, str]]:
                clients = local.__dict__.setdefault("clients", {})
                cl = clients.get(layout)
                if args.client == "httpx":
                    if cl is None:
                        cl = clients[layout] = httpx.Client(base_url=url, timeout=60)
                    r = cl.post("/translate", files={"image": ("x.jpg", images[k], "image/jpeg")}, data=fields)
                    return r.status_code, {k.lower(): v for k, v in r.headers.items()}
                if cl is None:
                    cl = clients[layout] = KeepAliveClient(host, port)
                body, ctype = bodies[k]
                return cl.post("/translate", body, ctype)

            def record(t0: float, ms: float, status: int, headers: dict[str, str]) -> None:
                if status == 200 and level[0] is not None:
                    server_ms.setdefault(level[0], []).append(float(headers["x-pocketgan-actual-ms"]))
                with served_lock:
                    served.append((t0, ms, status, headers.get("x-pocketgan-artifact", "")))

            def http(i=[0]) -> bool:  # noqa: B006
                i[0] += 1
                t0 = time.perf_counter()
                try:
                    status, headers = send(i[0] % len(images))
                except (httpx.HTTPError, OSError, http.client.HTTPException):
                    status, headers = 0, {}
                record(t0, (time.perf_counter() - t0) * 1000, status, headers)
                return status == 200

            if args.client == "asyncio":
                gen = AsyncLoadGenerator(host, port, bodies)
                return lambda c, n, max_s: gen.level(c, n, max_s, record)
            return lambda c, n, max_s: run_level(http, c, n, max_s)

        levels = {m: (lambda c, n, max_s, fn=fn: run_level(fn, c, n, max_s))
                  for m, fn in (("raw", raw_new), ("pipeline", pipeline), ("raw_old", raw_old)) if m in modes}
        levels.update({f"http_{k}": http_to(k) for k in layouts})  # level(concurrency, requests, max seconds)
        for k in layouts:
            levels[f"http_{k}"](1, 5, 60.0)
        groups = {k: sessions_of(p.proc.pid) for k, p in servers.items()}
        idle_s = 6.0  # the servers' own CPU with no requests (registry polling, BentoML): subtracted per level
        idle0 = {k: group_usage(p.proc.pid)[0] for k, p in servers.items()}
        time.sleep(idle_s)
        idle_rate = {k: (group_usage(p.proc.pid)[0] - idle0[k]) / idle_s for k, p in servers.items()}
        per_round = max(1, args.requests // args.rounds)
        for rnd in range(args.rounds):
            order = modes if rnd % 2 == 0 else modes[::-1]
            for c in args.concurrency:
                for m in order:
                    level[0] = (m, c) if m.startswith("http") else None
                    pg = servers[m[5:]].proc.pid if m.startswith("http") else None
                    me0 = time.process_time()
                    cpu0, flt0 = group_usage(pg) if pg else (me0, own_minflt())
                    res = levels[m](c, per_round, args.max_seconds / args.rounds)
                    me1 = time.process_time()
                    cpu1, flt1 = group_usage(pg) if pg else (me1, own_minflt())
                    cpu_s[m][c] += cpu1 - cpu0
                    faults[m][c] += flt1 - flt0
                    client_cpu_s[m][c] += me1 - me0
                    if pg:  # net of the server's idle CPU over the level's wall time
                        cpu_s[m][c] -= idle_rate[m[5:]] * (len(res[0]) / res[1] if res[1] > 0 else 0.0)
                    parts[m][c].append(res)
        level[0] = None
        results = {m: {c: merge(parts[m][c]) for c in args.concurrency} for m in modes}

        # -- promotion under load (new layout)
        served.clear()
        stop_at: list[float | None] = [None]
        if not args.no_swap:
            def promote_later() -> None:
                time.sleep(2.0)
                t = time.perf_counter()
                reg.promote(TASK, "production", [b_id], actor="bench")
                stop_at[0] = t

            th = threading.Thread(target=promote_later)
            th.start()
            swap_n = max(args.requests, 300)
            lat, tput, fails = levels["http_new"](4, swap_n, max(args.max_seconds, 12.0))
            th.join()
            t_promote = stop_at[0]
            first_b = min((s for s, _, st, a in served if a == b_id), default=None)
            window = [ms for s, ms, _, _ in served if t_promote is not None and first_b is not None
                      and t_promote - 0.5 <= s <= first_b + 1.0]
            outside = [ms for s, ms, _, _ in served if not (t_promote - 0.5 <= s <= (first_b or t_promote) + 1.0)]
            codes = sorted({st for _, _, st, _ in served})
    finally:
        for server in servers.values():
            server.stop()
        stop(s3.pid)
        lane.shutdown()

    print()
    load = os.getloadavg()
    print("servers' idle CPU (polling the registry every 1 s): "
          + ", ".join(f"{k} {v * 1000:.1f} ms/s" for k, v in idle_rate.items()) + " (subtracted from their CPU ms / image)")
    print(f"load average during the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {cores} cores; "
          f"{args.rounds} interleaved rounds; server-side = X-Pocketgan-Actual-Ms (decode..encode inside the service)")
    print(f"scheduler autogroups {'on' if autogroups_enabled() else 'off'}: raw modes run in 1 session, the servers' "
          "workers in " + ", ".join(f"{k} {v}" for k, v in groups.items())
          + (" (with autogroups on and other jobs on the CPU, a layout with more sessions gets more CPU than raw: "
             "compare its CPU per image, not its wall-clock ratio)" if autogroups_enabled() else ""))
    f3 = lambda L: f"{pct(L, 50):.1f} / {pct(L, 95):.1f} / {pct(L, 99):.1f}"  # noqa: E731

    def lay(k: str) -> str:
        w, i, t = layouts[k]
        return f"{w} x {i} x {t or 'ORT default'}"

    names = {"raw_old": "raw ORT, old def. (default threads, C runs at once)",
             "raw": f"raw ORT, same budget ({args.threads} thread(s), <= {budget} runs at once)",
             "pipeline": "in-process pipeline, same budget"}
    names.update({f"http_{k}": f"HTTP, {k} layout ({lay(k)})" for k in layouts})
    print("| C | mode | p50 / p95 / p99 ms | img/s | server-side p50 ms | CPU ms / image | benchmark process CPU ms / "
          "request | page faults / image | failures |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")

    def per_image(d: dict[str, dict[int, float]], m: str, c: int) -> float:
        return d[m][c] / max(1, len(results[m][c][0]))

    def per(d: dict[str, dict[int, float]], m: str, c: int) -> float:
        return per_image(d, m, c) * 1000  # seconds -> ms

    for c in args.concurrency:
        for m in modes:
            lat_m, tp, fl = results[m][c]
            side = server_ms.get((m, c))
            print(f"| {c} | {names[m]} | {f3(lat_m)} | {tp:.1f} | {pct(side, 50) if side else float('nan'):.1f} "
                  f"| {per(cpu_s, m, c):.1f} | {per(client_cpu_s, m, c):.1f} | {per_image(faults, m, c):.0f} "
                  f"| {fl} / {len(lat_m)} |")
    print("page faults / image: minor faults of the process(es) doing the work (raw: this one; HTTP: the server's). "
          "Our ORT sessions run without ORT's arena, so every run mallocs its intermediate buffer (~11 MB here); in "
          "some processes glibc serves it from freshly mapped memory every time (~1,000 faults, +2-3 ms of CPU per "
          "image; a few with huge pages), in others from memory it kept (~0). Which one is decided per process at "
          "start-up, for each side independently: a ratio between a faulting and a non-faulting side measures that "
          "draw, not the service.")
    print()
    print("ratios (targets: HTTP - raw p50 <= 5 ms at C=1; HTTP / raw throughput >= 0.85 at C=16). CPU: raw ORT's CPU ms "
          "per image (this process) / the service's (all its processes, net of idle): the throughput ratio on cores "
          "the service had to itself, and far less sensitive to other jobs on a shared CPU than wall-clock ratios. "
          "Client CPU: the load generator's CPU ms per request (it shares the cores with the server):")
    print("| C | layout | HTTP - raw p50 ms (old def.) | HTTP - raw p50 ms (same budget) | HTTP - pipeline p50 ms "
          "| HTTP / raw img/s (old def.) | HTTP / raw img/s (same budget) | service - raw CPU ms / image "
          "| raw / service CPU per image (same budget) | client CPU ms / request | raw / (service + client) CPU "
          "| HTTP / raw img/s per round: median (min-max) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    nan = float("nan")
    for c in args.concurrency:
        for k in layouts:
            m = f"http_{k}"
            h = results[m][c]
            rn, p = results["raw"][c], results["pipeline"][c]
            ro = results["raw_old"][c] if "raw_old" in results else ([nan], nan, 0)
            svc, raw_cpu, cl = per(cpu_s, m, c), per(cpu_s, "raw", c), per(client_cpu_s, m, c)
            paired = round_ratios(parts[m][c], parts["raw"][c])
            print(f"| {c} | {k} | {pct(h[0], 50) - pct(ro[0], 50):+.1f} | {pct(h[0], 50) - pct(rn[0], 50):+.1f} "
                  f"| {pct(h[0], 50) - pct(p[0], 50):+.1f} | {h[1] / ro[1]:.2f} | {h[1] / rn[1]:.2f} "
                  f"| {svc - raw_cpu:+.1f} | {raw_cpu / svc:.2f} | {cl:.1f} | {raw_cpu / (svc + cl):.2f} "
                  f"| {pct(paired, 50):.2f} ({min(paired):.2f}-{max(paired):.2f}) |")
    if not args.no_swap:
        print()
        print(f"promotion under load (new layout, C=4, {len(served)} requests): status codes {codes}, failures {fails}; "
              f"new set first served {((first_b or float('nan')) - (t_promote or float('nan'))):.2f} s after promote; "
              f"p99 during swap window {pct(window, 99):.2f} ms (n={len(window)}) vs outside {pct(outside, 99):.2f} ms "
              f"(n={len(outside)}); throughput {tput:.1f} img/s")


if __name__ == "__main__":
    main()
