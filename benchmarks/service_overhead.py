"""Service overhead: raw ONNX Runtime in-process vs `POST /translate` over loopback HTTP.

Same model (a mobile-ResNet student with random weights, exported by compression_jobs), same
images (real facades photos, 256x256 JPEG), one run:

1. raw: `OnnxGenerator.run` on the preprocessed tensor, C threads sharing one session;
2. full pipeline in-process (decode -> preprocess -> run -> postprocess -> encode), C threads;
3. HTTP: `bentoml serve` (1 worker) + the real local S3 registry, C client threads;

for C in 1, 4, 16: p50/p95/p99 latency, throughput and the HTTP/raw ratios. Then a promotion
under load (C=4): zero failed requests expected, p99 during the swap window reported. Also the
selection function's decision time. Bounded: at most --requests per level and --max-seconds each.

    python benchmarks/service_overhead.py [--requests 200] [--max-seconds 20] [--side 256]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's)")
    args = ap.parse_args()

    import httpx
    import onnxruntime as ort

    from registry.client import Registry
    from registry.config import RegistrySettings
    from registry.local_s3 import start_local_s3, stop
    from registry.manifest import HardwareProfile, LatencyMeasurement
    from registry.runtime import OnnxGenerator, image_to_tensor, tensor_to_image
    from service.images import decode_image, encode_image
    from service.launcher import ServiceProcess, ServiceStartError
    from service.selection import Candidate, Observed, SelectionRequest, select

    tmp = Path(tempfile.mkdtemp(prefix="pocketgan-bench-"))
    images = facades_jpegs(args.side)
    print(f"# pocketgan service overhead  (cpu cores: {os.cpu_count()}, image {args.side}x{args.side} JPEG, "
          f"ORT {ort.__version__}, intra-op threads {args.threads or 'default'})")

    a_id = export_student(tmp / "a", "16_16_32_16_32_32_16_16", 0)
    b_id = export_student(tmp / "b", "16_16_32_24_24_24_16_16", 1)
    gen = OnnxGenerator(tmp / "a" / "model.onnx", intra_op_threads=args.threads)
    gen.warm_up(args.side, args.side, runs=3)
    x, _ = image_to_tensor(decode_image(images[0], max_pixels=1 << 24).image, size_multiple=gen.size_multiple)

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

    # -- 1/2. in-process baselines
    def raw() -> bool:
        gen.run(x)
        return True

    def pipeline(i=[0]) -> bool:  # noqa: B006 - cheap round-robin over images
        i[0] += 1
        img = decode_image(images[i[0] % len(images)], max_pixels=1 << 24).image
        t, size = image_to_tensor(img, size_multiple=gen.size_multiple)
        encode_image(tensor_to_image(gen.run(t), size), "jpeg")
        return True

    results: dict[str, dict[int, tuple[list[float], float, int]]] = {"raw": {}, "pipeline": {}, "http": {}}
    for c in (1, 4, 16):
        results["raw"][c] = run_level(raw, c, args.requests, args.max_seconds)
        results["pipeline"][c] = run_level(pipeline, c, args.requests, args.max_seconds)

    # profile measured right here (legit: same machine, same session settings) so selection has data
    lat1 = results["raw"][1][0]
    prof = HardwareProfile(
        hardware_tag=TAG, runtime_version=ort.__version__, threads=args.threads,
        measurements=[LatencyMeasurement(height=args.side, width=args.side, runs=len(lat1), p50_ms=pct(lat1, 50),
                                         p95_ms=pct(lat1, 95), p99_ms=max(pct(lat1, 99), pct(lat1, 95)),
                                         throughput_ips=results["raw"][1][1])],
    )

    # -- 3. HTTP
    s3 = start_local_s3(tmp / "s3", bucket="bench")
    server = None
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
            "POCKETGAN_REGISTRY": "s3://bench/r", "POCKETGAN_CACHE_DIR": str(tmp / "svc-cache"),
            "BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
            "AWS_CONFIG_FILE": str(tmp / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"),
            "POCKETGAN_SERVICE_TASKS": json.dumps([TASK]), "POCKETGAN_SERVICE_HARDWARE_TAG": TAG,
            "POCKETGAN_SERVICE_POLL_INTERVAL_S": "1", "POCKETGAN_SERVICE_WORKERS": "1",
            "POCKETGAN_SERVICE_MAX_CONCURRENCY": "256", "POCKETGAN_SERVICE_INFERENCE_THREADS": "16",
            "POCKETGAN_SERVICE_WARMUP_SIZE": str(args.side),
        })
        if args.threads:
            env["POCKETGAN_SERVICE_INTRA_OP_THREADS"] = str(args.threads)
        server = ServiceProcess(env, tmp / "bentoml.log", cwd=REPO).start()
        url = server.url
        try:
            server.wait_for("/readyz", 120)
        except ServiceStartError as exc:
            raise SystemExit(str(exc)) from exc

        local = threading.local()
        served: list[tuple[float, float, int, str]] = []  # (start, ms, status, artifact)
        server_ms: dict[int, list[float]] = {}  # concurrency -> X-Pocketgan-Actual-Ms (server-side processing)
        level = [0]
        served_lock = threading.Lock()

        def http(i=[0]) -> bool:  # noqa: B006
            cl = getattr(local, "c", None)
            if cl is None:
                cl = local.c = httpx.Client(base_url=url, timeout=60)
            i[0] += 1
            t0 = time.perf_counter()
            try:
                r = cl.post("/translate", files={"image": ("x.jpg", images[i[0] % len(images)], "image/jpeg")},
                            data={"task": TASK, "device_class": "desktop", "latency_budget_ms": "60000"})
                status, art = r.status_code, r.headers.get("X-Pocketgan-Artifact", "")
                if status == 200:
                    server_ms.setdefault(level[0], []).append(float(r.headers["X-Pocketgan-Actual-Ms"]))
            except httpx.HTTPError:
                status, art = 0, ""
            with served_lock:
                served.append((t0, (time.perf_counter() - t0) * 1000, status, art))
            return status == 200

        for _ in range(5):
            http()
        for c in (1, 4, 16):
            level[0] = c
            results["http"][c] = run_level(http, c, args.requests, args.max_seconds)
        level[0] = -1

        # -- 4. promotion under load
        served.clear()
        stop_at = [None]

        def promote_later() -> None:
            time.sleep(2.0)
            t = time.perf_counter()
            reg.promote(TASK, "production", [b_id], actor="bench")
            stop_at[0] = t

        th = threading.Thread(target=promote_later)
        th.start()
        swap_n = max(args.requests, 400)
        lat, tput, fails = run_level(http, 4, swap_n, max(args.max_seconds, 12.0))
        th.join()
        t_promote = stop_at[0]
        first_b = min((s for s, _, st, a in served if a == b_id), default=None)
        window = [ms for s, ms, _, _ in served if t_promote is not None and first_b is not None
                  and t_promote - 0.5 <= s <= first_b + 1.0]
        outside = [ms for s, ms, _, _ in served if not (t_promote - 0.5 <= s <= (first_b or t_promote) + 1.0)]
        codes = sorted({st for _, _, st, _ in served})
    finally:
        if server is not None:
            server.stop()
        stop(s3.pid)

    print()
    load = os.getloadavg()
    print(f"load average during the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores "
          "(server-side = X-Pocketgan-Actual-Ms: decode..encode inside the service)")
    print("| C | raw ORT p50/p95/p99 ms | raw img/s | in-process pipeline p50/p95/p99 | pipeline img/s "
          "| HTTP p50/p95/p99 ms | server-side p50 ms | HTTP img/s | HTTP-raw p50 ms | HTTP-pipeline p50 ms | HTTP/raw throughput | HTTP failures |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in (1, 4, 16):
        r, p, h = results["raw"][c], results["pipeline"][c], results["http"][c]
        f = lambda L: f"{pct(L, 50):.2f} / {pct(L, 95):.2f} / {pct(L, 99):.2f}"  # noqa: E731
        print(f"| {c} | {f(r[0])} | {r[1]:.1f} | {f(p[0])} | {p[1]:.1f} | {f(h[0])} | {pct(server_ms.get(c, []), 50):.2f} | {h[1]:.1f} "
              f"| {pct(h[0], 50) - pct(r[0], 50):+.2f} | {pct(h[0], 50) - pct(p[0], 50):+.2f} | {h[1] / r[1]:.2f} "
              f"| {h[2]} / {len(h[0])} |")
    print()
    print(f"promotion under load (C=4, {len(served)} requests): status codes {codes}, failures {fails}; "
          f"new set first served {((first_b or float('nan')) - (t_promote or float('nan'))):.2f} s after promote; "
          f"p99 during swap window {pct(window, 99):.2f} ms (n={len(window)}) vs outside {pct(outside, 99):.2f} ms "
          f"(n={len(outside)}); throughput {tput:.1f} img/s")


if __name__ == "__main__":
    main()
