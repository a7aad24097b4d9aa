"""Teacher vs a family of mobile students on THIS machine: MACs ratio next to measured latency ratio,
old export next to the new one, measured side by side in one run.

    python benchmarks/latency_vs_macs.py [--size 256] [--runs 10] [--threads N] [--no-int8] [--table FILE]

Every generator is exported twice, parity-checked both times: ``old`` = the plain graph (what
artifacts were before ``export.fast_graph``), ``new`` = ``export_onnx(..., fast_graph=True)``
(compression_jobs/models/fast.py). All graphs (and INT8 copies of the old ones, QDQ calibrated
on real facades images) are then run INTERLEAVED, one run of each per round, so that load from
other jobs on a shared machine hits old and new alike; p50 per graph. Sessions use the service
runtime's options with thread spinning off (``latency_table.measurement_session_options``: with
spinning on, the idle pools of the other sessions in the loop steal the cores).

With ``--table FILE`` (an op table from ``pocketgan profile-ops --out FILE`` on this machine) each
student of the ngf-64 design space also gets a ``pick`` row: among ``--candidates`` random configs
with 95-100 % of its MACs, the one the table predicts fastest, exported the new way. Its quality
is not measured here (random weights): it shows what the latency-aware search can choose from.

Weights are random (a seeded init): latency depends on shapes and operators, not on weight
values. Figures are for this CPU only, and ratios, not absolute times, are the result.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compression_jobs.export import export_artifact  # noqa: E402
from compression_jobs.gan_compression.search import macs_at  # noqa: E402
from compression_jobs.hardware import resolve_hardware_tag  # noqa: E402
from compression_jobs.latency_table import (  # noqa: E402
    TableLatencyModel,
    measure_interleaved,
    pick_fastest,
    random_configs,
)
from compression_jobs.models import mobile_resnet_generator, resnet_generator  # noqa: E402
from compression_jobs.models.mobile import ChannelConfig  # noqa: E402
from compression_jobs.models.supernet import ChannelSpace  # noqa: E402
from compression_jobs.quantize import quantize_artifact  # noqa: E402
from registry.optables import OpTable  # noqa: E402

STUDENTS = [
    "64_128_256_256_256_256_128_64",  # full-width mobile ResNet (depthwise-separable blocks)
    "32_64_128_128_128_128_64_32",
    "16_32_64_64_64_64_32_16",  # ~40x
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
    ap.add_argument("--table", type=Path, default=None, help="op table JSON of this machine (profile-ops --out)")
    ap.add_argument("--candidates", type=int, default=3000, help="random configs scanned per pick (--table)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    models = [("teacher resnet ngf64 9blk", None, resnet_generator(ngf=64, n_blocks=9))]
    models += [(f"student {cfg}", cfg, mobile_resnet_generator(cfg, n_blocks=9)) for cfg in STUDENTS]
    if args.table:
        table = OpTable.model_validate_json(args.table.read_text())
        space = ChannelSpace.from_multipliers(ChannelConfig.full(64))
        lut = TableLatencyModel.for_space(table, space, 9, resolution=args.size, fast_graph=True)
        candidates = random_configs(space, args.candidates, seed=0)
        for cfg in STUDENTS:
            if space.contains(cfg):
                target = macs_at(mobile_resnet_generator(cfg, n_blocks=9), args.size)
                pick = pick_fastest(lut, candidates, min_macs=math.ceil(0.95 * target), max_macs=target)
                if pick is not None and str(pick) != cfg:
                    models.append((f"pick for {cfg}: {pick}", str(pick), mobile_resnet_generator(pick, n_blocks=9)))
    rows, paths, shapes = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="pocketgan-bench-") as tmp:
        for i, (name, cfg, model) in enumerate(models):
            row = {"name": name}
            for kind, fast in (("old", False), ("new", True)):
                if kind == "old" and name.startswith("pick"):
                    continue
                folder = Path(tmp) / f"m{i}-{kind}"
                man = export_artifact(model, folder, task="benchmark", method="teacher" if cfg is None else "student",
                                      fast_graph=fast)
                row["macs"] = man.architecture.macs
                paths[(i, kind)] = folder / "model.onnx"
                if kind == "old" and not args.no_int8:
                    q = Path(tmp) / f"m{i}-int8"
                    qman = quantize_artifact(folder, args.images, q, resolution=args.size, n_calibration=8,
                                             n_holdout=3, half="right", threads=args.threads)
                    paths[(i, "int8")] = q / "model.onnx"
                    row["psnr"] = qman.quality.psnr_to_fp32
            rows.append(row)
            print(f"exported: {name}", file=sys.stderr)
        names = {f"{i}:{kind}": p for (i, kind), p in paths.items()}
        shapes = {n: (1, 3, args.size, args.size) for n in names}
        p50 = measure_interleaved(names, shapes, threads=args.threads, provider="CPUExecutionProvider",
                                  runs=args.runs, warmup=args.warmup)
    for i, row in enumerate(rows):
        for kind in ("old", "new", "int8"):
            if f"{i}:{kind}" in p50:
                row[kind] = p50[f"{i}:{kind}"]

    teacher = rows[0]
    tag = resolve_hardware_tag(None, "CPUExecutionProvider")
    print(f"\nLatency vs MACs at {args.size}x{args.size}, batch 1, ONNX Runtime CPU EP, {args.threads} threads, {tag}, "
          f"p50 of {args.runs} runs, all graphs interleaved in one run (random weights). old = plain export, "
          f"new = fast_graph export; ratios are against the teacher of the same export.\n")
    head = ("| model | GMACs | MACs ratio | old p50 ms | old latency ratio | old ÷ MACs ratio | new p50 ms | "
            "new latency ratio | new ÷ MACs ratio | new vs old |")
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if not args.no_int8:
        head += " old int8 p50 ms | int8 vs own old fp32 | int8 PSNR to fp32 (dB) |"
        sep += "---:|---:|---:|"
    print(head)
    print(sep)
    for r in rows:
        mr = teacher["macs"] / r["macs"]
        cells = [r["name"], f"{r['macs'] / 1e9:.2f}", f"{mr:.1f}x"]
        if "old" in r:
            lo = teacher["old"] / r["old"]
            cells += [f"{r['old']:.1f}", f"{lo:.1f}x", f"{lo / mr:.2f}"]
        else:
            cells += ["-", "-", "-"]
        ln = teacher["new"] / r["new"]
        cells += [f"{r['new']:.1f}", f"{ln:.1f}x", f"{ln / mr:.2f}", f"{r['old'] / r['new']:.2f}x" if "old" in r else "-"]
        if not args.no_int8:
            cells += [f"{r['int8']:.1f}", f"{r['old'] / r['int8']:.2f}x", f"{r['psnr']:.1f}"] if "int8" in r else ["-"] * 3
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
