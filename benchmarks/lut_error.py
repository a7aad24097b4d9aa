"""Op-table latency prediction vs measurement for random sub-networks on THIS machine.

    python benchmarks/lut_error.py [--samples 20] [--runs 10] [--threads N] [--table FILE | --save-table FILE] [--plain-graph]

1. Measures the op latency table of the default student design space (ngf 64, multipliers
   0.25/0.5/0.75/1, 9 blocks) here, exactly as ``pocketgan profile-ops --dry-run`` does (or
   reads one written by ``profile-ops --out FILE``).
2. Exports `--samples` random sub-networks the way the pipeline exports students
   (``export_onnx``: dynamo exporter, dynamic shapes, parity-checked) plus 5 networks for
   today's baseline (smallest, largest, 3 random: ``ms = a + b·MACs`` fitted to them, the
   search's linear latency model), and measures them in the SAME interleaved rounds as the
   table's blocks (all sessions alive at once), so that load from other jobs on a shared
   machine hits table and networks alike (with ``--table`` they are measured later, alone).
3. Prints predicted vs measured p50 per sub-network and the median absolute error of both
   predictors. Random weights: latency depends on shapes, not values.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compression_jobs.export import export_onnx  # noqa: E402
from compression_jobs.gan_compression.search import LatencyModel, macs_at  # noqa: E402
from compression_jobs.hardware import resolve_hardware_tag  # noqa: E402
from compression_jobs.latency_table import TableLatencyModel, measure_interleaved, profile_ops  # noqa: E402
from compression_jobs.models.mobile import MobileResnetGenerator  # noqa: E402
from compression_jobs.models.supernet import ChannelSpace  # noqa: E402
from registry.optables import OpTable  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--table", type=Path, default=None, help="op table JSON from `pocketgan profile-ops --out`")
    ap.add_argument("--save-table", type=Path, default=None, help="write the measured table here (for --table later)")
    ap.add_argument("--plain-graph", action="store_true", help="tables and networks without the fast-graph rewrites")
    args = ap.parse_args()
    torch.manual_seed(0)
    fast = not args.plain_graph
    space = ChannelSpace.from_multipliers("64_128_256_256_256_256_128_64")  # ChannelConfig.full(64), default multipliers
    tag = resolve_hardware_tag(None, "CPUExecutionProvider")
    rng = random.Random(args.seed)
    evaluate: list = []
    while len(evaluate) < args.samples:
        c = space.sample(rng)
        if c not in evaluate:
            evaluate.append(c)
    baseline = [space.smallest(), space.largest()]
    while len(baseline) < 5:
        c = space.sample(rng)
        if c not in baseline and c not in evaluate:
            baseline.append(c)
    nets, macs = {}, {}
    with tempfile.TemporaryDirectory(prefix="pocketgan-lut-") as tmp:
        for i, cfg in enumerate(evaluate + baseline):
            net = MobileResnetGenerator(cfg, n_blocks=9).eval()
            path = Path(tmp) / f"n{i}.onnx"
            export_onnx(net, path, resolution=64, fast_graph=fast)
            nets[str(cfg)] = (path, (1, 3, args.size, args.size))
            macs[str(cfg)] = macs_at(net, args.size)
            print(f"exported {i + 1}/{len(evaluate) + len(baseline)}", file=sys.stderr)
        measured: dict[str, float] = {}
        if args.table:
            table = OpTable.model_validate_json(args.table.read_text())
            paths = {n: p for n, (p, _) in nets.items()}
            measured = measure_interleaved(paths, {n: s for n, (_, s) in nets.items()}, threads=args.threads,
                                           provider="CPUExecutionProvider", runs=args.runs, warmup=args.warmup)
        else:
            print(f"profiling the op table ({space.size} configs) with the networks in the same rounds ...",
                  file=sys.stderr)
            table = profile_ops(space, hardware_tag=tag, resolution=args.size, threads=args.threads, runs=args.runs,
                                warmup=args.warmup, fast_export=fast, group_size=0, also_measure=nets,
                                also_measured=measured)
            if args.save_table:
                args.save_table.write_text(table.model_dump_json(indent=1))
    lut = TableLatencyModel.for_space(table, space, 9, resolution=args.size, fast_graph=fast)
    linear = LatencyModel.fit([(macs[str(c)], measured[str(c)]) for c in baseline], tag)

    print(f"\nOp-table prediction vs measurement, {args.samples} random sub-networks of the ngf-64 space, "
          f"{args.size}x{args.size}, ORT CPU EP, {args.threads} threads, {tag}, p50 of {args.runs} interleaved runs, "
          f"fast_graph={fast}; table scale {table.scale:.3f}\n")
    print("| sub-network | GMACs | measured p50 ms | op table ms | error | linear-in-MACs ms | error |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    err_t, err_l = [], []
    for c in evaluate:
        n = str(c)
        m, pt, pl = measured[n], lut.predict_config(c), linear.predict(macs[n])
        err_t.append(abs(pt - m) / m)
        err_l.append(abs(pl - m) / m)
        print(f"| {n} | {macs[n] / 1e9:.2f} | {m:.1f} | {pt:.1f} | {100 * (pt - m) / m:+.1f}% | {pl:.1f} | "
              f"{100 * (pl - m) / m:+.1f}% |")
    print(f"\nmedian |error|: op table {100 * np.median(err_t):.1f}% (max {100 * max(err_t):.1f}%), "
          f"linear in MACs from 5 measured networks (today's search) {100 * np.median(err_l):.1f}% "
          f"(max {100 * max(err_l):.1f}%)")


if __name__ == "__main__":
    main()
