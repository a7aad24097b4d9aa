"""A normal client alone vs the same client while the service is abused (loopback only, bounded).

Set-up: a mobile-ResNet student (random weights, exported by compression_jobs) profiled here
(latency at the normal size, peak bytes/pixel at the maximum size) in the real local S3 registry;
`bentoml serve` with 1 worker, API keys on, default admission settings except `max_pixels`.

1. alone: one client sends --requests sequential 256x256 JPEGs (real facades photos);
2. abused: the same, while 64 connections each send half a body and stall (slowloris; they are
   re-opened when the server drops them) and 4 clients keep sending maximum-size images (--max-side).

Printed side by side: p50/p99 and failures of the normal client, the abusers' outcomes by status,
and the p99 ratio (target <= 2, 0 failed normal requests). Everything talks to 127.0.0.1 only.

    python benchmarks/abuse.py [--requests 100] [--max-side 1024] [--max-seconds 60]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import socket
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
KEY = "bench-key-not-secret"


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def jpeg(side: int, index: int = 0) -> bytes:
    from PIL import Image

    files = sorted(Path("/work/shared/data/facades/test").glob("*.jpg"))
    if not files:
        raise SystemExit("no facades images under /work/shared/data/facades/test")
    img = Image.open(files[index % len(files)]).convert("RGB")
    w, h = img.size
    buf = io.BytesIO()
    img.crop((0, 0, w // 2, h)).resize((side, side)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    from service.launcher import exit_on_sigterm

    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100, help="normal requests per phase")
    ap.add_argument("--max-side", type=int, default=1024, help="side of the maximum-size images (= max_pixels)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="cap on each phase")
    ap.add_argument("--slow", type=int, default=64, help="stalled uploads kept open")
    ap.add_argument("--big", type=int, default=4, help="clients sending maximum-size images")
    args = ap.parse_args()

    import httpx
    import onnxruntime as ort
    import torch

    from compression_jobs.export import export_artifact
    from compression_jobs.models.mobile import mobile_resnet_generator
    from compression_jobs.profiling import measure
    from registry.client import Registry
    from registry.config import RegistrySettings
    from registry.local_s3 import start_local_s3, stop
    from registry.manifest import HardwareProfile
    from registry.runtime import OnnxGenerator
    from service.launcher import ServiceProcess, ServiceStartError

    tmp = Path(tempfile.mkdtemp(prefix="pocketgan-abuse-"))
    torch.manual_seed(0)
    aid = export_artifact(mobile_resnet_generator("16_16_32_16_32_32_16_16").eval(), tmp / "a", task=TASK,
                          method="gan-compression").artifact_id
    gen = OnnxGenerator(tmp / "a" / "model.onnx", intra_op_threads=1)
    normal_point = measure(gen, 256, 256, warmup=2, runs=10)
    big_point = measure(gen, args.max_side, args.max_side, warmup=1, runs=1)
    del gen
    print(f"# pocketgan abuse benchmark (cpu cores: {os.cpu_count()}, ORT {ort.__version__}, 1 worker, "
          f"1 intra-op thread; normal: 256x256 JPEG; big: {args.max_side}x{args.max_side} JPEG)")
    print(f"artifact peak bytes/pixel at {args.max_side}^2: {big_point.peak_bytes_per_pixel}; "
          f"256^2 p50 in-process {normal_point.p50_ms:.1f} ms")
    normal, big = jpeg(256, 0), jpeg(args.max_side, 1)

    s3 = start_local_s3(tmp / "s3", bucket="bench")
    server = None
    try:
        settings = RegistrySettings(registry="s3://bench/r", s3_endpoint=s3.endpoint, region=s3.region,
                                    cache_dir=tmp / "cache", access_key_id=s3.access_key,
                                    secret_access_key=s3.secret_key, actor="bench")
        reg = Registry(settings)
        reg.publish_dir(tmp / "a")
        reg.add_profile(aid, HardwareProfile(hardware_tag=TAG, runtime_version=ort.__version__, threads=1,
                                             measurements=[normal_point, big_point]), task=TASK)
        reg.promote(TASK, "production", [aid], actor="bench")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POCKETGAN_"))}
        env.update(s3.env())
        env.update({
            "POCKETGAN_REGISTRY": "s3://bench/r", "POCKETGAN_CACHE_DIR": str(tmp / "svc-cache"),
            "BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
            "AWS_CONFIG_FILE": str(tmp / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"),
            "POCKETGAN_SERVICE_TASKS": json.dumps([TASK]), "POCKETGAN_SERVICE_HARDWARE_TAG": TAG,
            "POCKETGAN_SERVICE_WORKERS": "1", "POCKETGAN_SERVICE_INTRA_OP_THREADS": "1",
            "POCKETGAN_SERVICE_MAX_PIXELS": str(args.max_side * args.max_side),
            "POCKETGAN_SERVICE_API_KEY_HASHES": hashlib.sha256(KEY.encode()).hexdigest(),
        })
        server = ServiceProcess(env, tmp / "bentoml.log", cwd=REPO).start()
        url = server.url
        auth = {"Authorization": f"Bearer {KEY}"}
        try:
            server.wait_for("/readyz", 120)
        except ServiceStartError as exc:
            raise SystemExit(str(exc)) from exc

        def post(c: httpx.Client, data: bytes) -> int:
            try:
                return c.post("/translate", files={"image": ("x.jpg", data, "image/jpeg")},
                              data={"task": TASK, "device_class": "desktop", "latency_budget_ms": "60000"}).status_code
            except httpx.HTTPError:
                return 0

        def normal_phase() -> tuple[list[float], int]:
            lat, fails = [], 0
            end = time.monotonic() + args.max_seconds
            with httpx.Client(base_url=url, timeout=60, headers=auth) as c:
                for _ in range(5):
                    post(c, normal)  # warm the connection and the worker
                for _ in range(args.requests):
                    if time.monotonic() > end:
                        break
                    t0 = time.perf_counter()
                    ok = post(c, normal) == 200
                    lat.append((time.perf_counter() - t0) * 1000)
                    fails += not ok
            return lat, fails

        alone, alone_fail = normal_phase()

        stop_abuse = threading.Event()
        big_status: collections.Counter[int] = collections.Counter()
        slow_closed = [0]
        head = (f"POST /translate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n").encode()

        def slowloris() -> None:
            socks: list[socket.socket] = []
            while not stop_abuse.is_set():
                while len(socks) < args.slow:
                    s = socket.create_connection(("127.0.0.1", server.port), timeout=1)
                    s.sendall(head)
                    socks.append(s)
                for s in list(socks):  # re-open the ones the server answered (408) and closed
                    s.setblocking(False)
                    try:
                        s.recv(65536)  # data (the 408) or b"" (closed): either way this one is done
                    except BlockingIOError:
                        continue  # still waiting on us: keep stalling
                    except OSError:
                        pass
                    s.close()
                    socks.remove(s)
                    slow_closed[0] += 1
                time.sleep(0.2)
            for s in socks:
                s.close()

        def big_client() -> None:
            with httpx.Client(base_url=url, timeout=120, headers=auth) as c:
                while not stop_abuse.is_set():
                    code = post(c, big)
                    big_status[code] += 1
                    if code in (429, 503):
                        time.sleep(1.0)  # Retry-After

        threads = [threading.Thread(target=slowloris, daemon=True)]
        threads += [threading.Thread(target=big_client, daemon=True) for _ in range(args.big)]
        for t in threads:
            t.start()
        time.sleep(2.0)  # abuse in full swing
        abused, abused_fail = normal_phase()
        stop_abuse.set()
        for t in threads:
            t.join(timeout=150)

        print(f"\n{'':26}{'alone':>12}{'under abuse':>14}{'ratio':>8}")
        for name, q in (("normal p50 ms", 50), ("normal p99 ms", 99)):
            a, b = pct(alone, q), pct(abused, q)
            print(f"{name:26}{a:12.1f}{b:14.1f}{b / a:8.2f}")
        print(f"{'normal requests (failed)':26}{f'{len(alone)} ({alone_fail})':>12}{f'{len(abused)} ({abused_fail})':>14}")
        print(f"abuse: {args.slow} stalled uploads kept open ({slow_closed[0]} answered 408 and re-opened); "
              f"{args.big} big-image clients, outcomes by status: {dict(sorted(big_status.items()))}")
        ratio = pct(abused, 99) / pct(alone, 99)
        verdict = "met" if ratio <= 2.0 and abused_fail == 0 else "NOT met"
        print(f"target p99 under abuse <= 2x alone and 0 failed normal requests: {verdict} (p99 ratio {ratio:.2f})")
    finally:
        if server is not None:
            server.stop()
        stop(s3.pid)


if __name__ == "__main__":
    main()
