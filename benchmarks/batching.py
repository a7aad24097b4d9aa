"""Would adaptive batching help the service on this machine? Throughput by batch size, one run.

    python benchmarks/batching.py [--size 256] [--seconds 3] [--threads N]

For a small student, a mid student and the teacher (random seeded weights: throughput depends on
shapes, not values), exported to ONNX and run with the ONNX Runtime wrapper the service uses:
images/s at batch 1, 2, 4, 8 and the ratio to batch 1. Batching only pays where that ratio is
well above 1; latency per request grows with the batch, so a gain of a few percent does not
justify the queueing delay it costs on a latency-budgeted endpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compression_jobs.export import export_onnx  # noqa: E402
from compression_jobs.models import mobile_resnet_generator, resnet_generator  # noqa: E402
from registry.runtime import OnnxGenerator  # noqa: E402

BATCHES = (1, 2, 4, 8)


def throughput(gen: OnnxGenerator, batch: int, size: int, seconds: float) -> float:
    """Images per second over at least `seconds` of back-to-back runs (after one warm-up)."""
    x = np.random.default_rng(0).uniform(-1, 1, (batch, gen.input_nc, size, size)).astype(np.float32)
    gen.run(x)
    n, t0 = 0, time.perf_counter()
    while True:
        gen.run(x)
        n += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 2 * batch:
            return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.manual_seed(0)
    models = [
        ("student 16_16_32_16_32_32_16_16", mobile_resnet_generator("16_16_32_16_32_32_16_16", n_blocks=9)),
        ("student 32_64_128_128_128_128_64_32", mobile_resnet_generator("32_64_128_128_128_128_64_32", n_blocks=9)),
        ("teacher resnet ngf64 9blk", resnet_generator(ngf=64, n_blocks=9)),
    ]
    print(f"ONNX Runtime CPU, {args.threads} threads, {args.size}x{args.size}, >= {args.seconds:g} s per point\n")
    print("| model | " + " | ".join(f"b{b} img/s" for b in BATCHES) + " | " + " | ".join(f"b{b}/b1" for b in BATCHES[1:]) + " |")
    print("|---|" + "---:|" * (2 * len(BATCHES) - 1))
    with tempfile.TemporaryDirectory(prefix="pocketgan-batch-") as tmp:
        for i, (name, model) in enumerate(models):
            path = Path(tmp) / f"m{i}.onnx"
            export_onnx(model.eval(), path, resolution=64)
            gen = OnnxGenerator(path, providers=["CPUExecutionProvider"], intra_op_threads=args.threads)
            ips = [throughput(gen, b, args.size, args.seconds) for b in BATCHES]
            print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in ips) + " | "
                  + " | ".join(f"{v / ips[0]:.2f}x" for v in ips[1:]) + " |", flush=True)


if __name__ == "__main__":
    main()
