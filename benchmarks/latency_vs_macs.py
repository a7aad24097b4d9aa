"""Teacher vs a family of mobile students on THIS machine: MACs ratio next to measured latency ratio.

    python benchmarks/latency_vs_macs.py [--size 256] [--runs 10] [--threads N] [--no-int8]

One run exports each generator to ONNX (parity-checked), INT8-quantizes it (QDQ, calibrated on
real facades images), measures p50 latency with the same ONNX Runtime wrapper the service uses,
and prints a markdown table. Weights are random (a seeded init): latency depends on shapes and
operators, not on weight values, so no trained checkpoint is needed. Numbers are for this CPU
only; profiles for other hardware are measured there with `pocketgan profile`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compression_jobs.export import export_artifact  # noqa: E402
from compression_jobs.hardware import resolve_hardware_tag  # noqa: E402
from compression_jobs.models import mobile_resnet_generator, resnet_generator  # noqa: E402
from compression_jobs.profiling import profile_model  # noqa: E402
from compression_jobs.quantize import quantize_artifact  # noqa: E402

STUDENTS = [
    "64_128_256_256_256_256_128_64",  # full-width mobile ResNet (depthwise-separable blocks)
    "32_64_128_128_128_128_64_32",
    "16_32_64_64_64_64_32_16",
    "16_16_32_16_32_32_16_16",  # the GAN Compression-style string example
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--images", type=Path, default=ROOT / "compression_jobs" / "embedded" / "facades" / "test")
    ap.add_argument("--no-int8", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    models = [("teacher resnet ngf64 9blk", None, resnet_generator(ngf=64, n_blocks=9))]
    models += [(f"student {cfg}", cfg, mobile_resnet_generator(cfg, n_blocks=9)) for cfg in STUDENTS]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pocketgan-bench-") as tmp:
        for i, (name, cfg, model) in enumerate(models):
            fp32_dir = Path(tmp) / f"m{i}"
            man = export_artifact(model, fp32_dir, task="benchmark", method="teacher" if cfg is None else "student")
            prof = profile_model(fp32_dir / "model.onnx", resolutions=[(args.size, args.size)], warmup=args.warmup,
                                 runs=args.runs, threads=args.threads, provider="CPUExecutionProvider", label=name)
            row = {"name": name, "macs": man.architecture.macs, "params": man.architecture.params,
                   "mb": man.architecture.file_bytes / 1e6, "fp32": prof.measurements[0].p50_ms}
            if not args.no_int8:
                q_dir = Path(tmp) / f"m{i}-int8"
                qman = quantize_artifact(fp32_dir, args.images, q_dir, resolution=args.size, n_calibration=8, n_holdout=3,
                                         half="right", threads=args.threads)
                qprof = profile_model(q_dir / "model.onnx", resolutions=[(args.size, args.size)], warmup=args.warmup,
                                      runs=args.runs, threads=args.threads, provider="CPUExecutionProvider", label=name + " int8")
                row.update(int8=qprof.measurements[0].p50_ms, psnr=qman.quality.psnr_to_fp32, qmb=qman.architecture.file_bytes / 1e6)
            rows.append(row)
            print(f"done: {name}", file=sys.stderr)

    teacher = rows[0]
    tag = resolve_hardware_tag(None, "CPUExecutionProvider")
    print(f"\nLatency vs MACs at {args.size}x{args.size}, batch 1, ONNX Runtime CPU EP, {args.threads} threads, "
          f"{tag}, p50 of {args.runs} runs (random weights)\n")
    head = "| model | GMACs | MACs ratio | params (M) | fp32 p50 ms | fp32 speedup |"
    sep = "|---|---:|---:|---:|---:|---:|"
    if not args.no_int8:
        head += " int8 p50 ms | int8 speedup vs teacher fp32 | int8 vs own fp32 | int8 PSNR to fp32 (dB) |"
        sep += "---:|---:|---:|---:|"
    print(head)
    print(sep)
    for r in rows:
        line = (f"| {r['name']} | {r['macs'] / 1e9:.2f} | {teacher['macs'] / r['macs']:.1f}x | {r['params'] / 1e6:.2f} | "
                f"{r['fp32']:.1f} | {teacher['fp32'] / r['fp32']:.1f}x |")
        if not args.no_int8:
            line += (f" {r['int8']:.1f} | {teacher['fp32'] / r['int8']:.1f}x | {r['fp32'] / r['int8']:.2f}x | "
                     f"{r['psnr']:.1f} |")
        print(line)


if __name__ == "__main__":
    main()
