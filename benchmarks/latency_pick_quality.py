"""Does a latency-table pick give students faster than a MACs pick at the same SSIM to the teacher?

    python benchmarks/latency_pick_quality.py --data ../shared/data/facades --max-train 400 --steps 600 \
        [--table T.json | --table-out T.json] [--eval-every 200] [--no-capacity-pick]

Side by side in one run, on THIS machine:

1. The op table (``pocketgan profile-ops``'s measurement, in-process; ``--table FILE`` reuses one
   measured here before, e.g. by ``pocketgan profile-ops --out FILE``).
2. Students of the ngf-64 mobile-ResNet design space: ``--target`` (default the uniform
   32_64_128_128_128_128_64_32, 4.93 GMACs@256: what a MACs budget or a latency model linear in
   MACs returns), the config the table predicts fastest among ``--candidates`` random ones with
   ``--window``-100 % of its MACs (``latency_table.pick_fastest``), and, unless
   ``--no-capacity-pick``, the one with the most MACs the table predicts no slower than the target
   (``latency_table.pick_most_macs``: more capacity at the same speed).
3. Each student is trained from the same seeded init, for the same steps on the same batches, by
   pure output distillation from the real pretrained vintagify teacher (benchmarks/vintagify_recipe.py:
   photos = left halves of facades/train, teacher outputs cached once, L1 + (1-SSIM), Adam lr 1e-3,
   cosine, 64 px crops, batch 8), and scored by SSIM/PSNR to the teacher on the held-out photos
   (facades/test left halves, 128 px) next to the identity and mean-image baselines.
4. The trained students are exported the normal way (``export_artifact(..., fast_graph=True)``,
   parity-checked) and run in ONNX Runtime interleaved round by round (as latency_vs_macs.py does,
   sessions without spinning) at each ``--lat-threads``; p50 at 256x256 per student.

Prints JSON progress lines, then one markdown table. Quality is compared at equal steps, so a
shared CPU slows the run but does not bias it; the latency ratios are measured in one run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.vintagify_recipe import cpu_seconds, distill_data, reinit, train  # noqa: E402
from compression_jobs.baselines import trivial_baselines  # noqa: E402
from compression_jobs.counting import count_macs  # noqa: E402
from compression_jobs.export import export_artifact  # noqa: E402
from compression_jobs.gan_compression.evaluate import fidelity  # noqa: E402
from compression_jobs.hardware import resolve_hardware_tag  # noqa: E402
from compression_jobs.latency_table import (  # noqa: E402
    TableLatencyModel,
    config_macs,
    measure_interleaved,
    pick_fastest,
    pick_most_macs,
    profile_ops,
    random_configs,
)
from compression_jobs.models import mobile_resnet_generator  # noqa: E402
from compression_jobs.models.mobile import ChannelConfig  # noqa: E402
from compression_jobs.models.supernet import ChannelSpace  # noqa: E402
from registry.optables import OpTable  # noqa: E402

PROVIDER = "CPUExecutionProvider"
N_BLOCKS = 9


def log(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def load_or_measure_table(args: argparse.Namespace, space: ChannelSpace) -> OpTable:
    """--table FILE, else this machine's table measured now (and written to --table-out)."""
    if args.table:
        return OpTable.model_validate_json(args.table.read_text())
    w0 = time.time()
    table = profile_ops(space, hardware_tag=resolve_hardware_tag(None, PROVIDER), n_blocks=N_BLOCKS,
                        resolution=args.size, threads=args.table_threads, provider=PROVIDER, runs=args.table_runs,
                        fast_export=True)
    if args.table_out:
        args.table_out.write_text(table.model_dump_json(indent=1))
    log(op_table=table.hardware_tag, blocks=len(table.entries), threads=args.table_threads,
        wall_s=round(time.time() - w0), scale=table.scale, intercept_ms=table.intercept_ms)
    return table


def choose_students(args: argparse.Namespace, lut: TableLatencyModel, space: ChannelSpace) -> list[tuple[str, ChannelConfig]]:
    """(role, config): the target, the table's fastest at <= its MACs, the table's most MACs at <= its time."""
    target = space.validate(args.target)
    target_macs = config_macs(target, N_BLOCKS, args.size)
    target_ms = lut.predict_config(target)
    candidates = random_configs(space, args.candidates, seed=args.seed)
    students = [("MACs pick (target)", target)]
    fast = pick_fastest(lut, candidates, min_macs=math.ceil(args.window * target_macs), max_macs=target_macs)
    if fast is not None and fast != target and lut.predict_config(fast) < target_ms:
        students.append(("table: fastest at <= MACs", fast))
    else:
        log(note="no config in the MACs window is predicted faster than the target", window=args.window)
    if args.capacity_pick:
        roomy = pick_most_macs(lut, candidates, max_ms=target_ms)
        if roomy is not None and config_macs(roomy, N_BLOCKS, args.size) > target_macs:
            students.append(("table: most MACs at <= time", roomy))
        else:
            log(note="no candidate has more MACs at the target's predicted latency")
    for role, cfg in students:
        log(student=str(cfg), role=role, gmacs=round(config_macs(cfg, N_BLOCKS, args.size) / 1e9, 3),
            predicted_ms=round(lut.predict_config(cfg), 2))
    return students


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/facades", help="pix2pix-layout folder; photos = left halves")
    ap.add_argument("--max-train", type=int, default=400, help="training photos (facades/train has 400)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pocketgan_pick_quality_cache.pt",
                    help="teacher outputs, rebuilt when --data/--max-train differ")
    ap.add_argument("--target", default="32_64_128_128_128_128_64_32", help="today's student (a config of the space)")
    ap.add_argument("--table", type=Path, default=None, help="op table JSON measured on this machine (profile-ops --out)")
    ap.add_argument("--table-out", type=Path, default=None, help="write the table measured here to this file")
    ap.add_argument("--table-threads", type=int, default=1, help="ORT threads for the table (jobs' profile_threads)")
    ap.add_argument("--table-runs", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=3000, help="random configs the picks scan")
    ap.add_argument("--window", type=float, default=0.95, help="fastest pick: MACs in [window, 1] x the target's")
    ap.add_argument("--no-capacity-pick", dest="capacity_pick", action="store_false",
                    help="skip the most-MACs-at-the-same-predicted-latency student")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=0, help="also score every N steps (the curve)")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0, help="init, batches and candidates")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for teacher outputs and training")
    ap.add_argument("--size", type=int, default=256, help="latency and MACs resolution")
    ap.add_argument("--lat-threads", type=int, nargs="+", default=[1, 2], help="ORT intra-op threads measured")
    ap.add_argument("--runs", type=int, default=10, help="timed latency rounds")
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    if not 0 < args.window <= 1 or args.steps < 0 or args.candidates < 1 or args.runs < 1:
        ap.error("--window must be in (0, 1], --steps >= 0, --candidates and --runs >= 1")
    torch.set_num_threads(args.threads)

    space = ChannelSpace.from_multipliers(ChannelConfig.full(64))
    table = load_or_measure_table(args, space)
    lut = TableLatencyModel.for_space(table, space, N_BLOCKS, resolution=args.size, fast_graph=True)
    students = choose_students(args, lut, space)

    teacher, c, train_set, test = distill_data(args.data, args.max_train, args.cache)
    teacher_macs = count_macs(teacher, args.size)
    baselines = {b.name: b for b in trivial_baselines(test, train_set, c["test_t"], 8)}
    log(baselines={n: round(b.ssim_to_teacher, 4) for n, b in baselines.items()}, train_photos=len(c["src"]),
        test_photos=len(c["test_src"]), teacher_gmacs=round(teacher_macs / 1e9, 2))

    rows = []
    for role, cfg in students:
        student = reinit(mobile_resnet_generator(cfg, n_blocks=N_BLOCKS), args.seed)
        curve: list[str] = []
        c0, w0 = cpu_seconds(), time.time()

        def on_eval(step: int, student: torch.nn.Module = student, cfg: ChannelConfig = cfg,
                    curve: list[str] = curve) -> None:
            with torch.no_grad():
                m = fidelity(student, test, c["test_t"], 8)
            curve.append(f"{m['ssim_to_teacher']:.3f}@{step}")
            log(student=str(cfg), at_step=step, ssim_t=round(m["ssim_to_teacher"], 4),
                cpu_s=round(cpu_seconds() - c0), wall_s=round(time.time() - w0))

        if args.steps:
            train(student, c["src"], c["tgt"], steps=args.steps, crop=args.crop, batch=args.batch, lr=args.lr,
                  loss="l1ssim", schedule="cos", seed=args.seed, on_eval=on_eval, eval_every=args.eval_every)
        student.eval()
        with torch.no_grad():
            m = fidelity(student, test, c["test_t"], 8)
        row = {"role": role, "config": str(cfg), "macs": count_macs(student, args.size),
               "predicted_ms": lut.predict_config(cfg), "ssim": m["ssim_to_teacher"], "psnr": m["psnr_to_teacher"],
               "curve": curve, "train_cpu_s": cpu_seconds() - c0, "train_wall_s": time.time() - w0, "model": student}
        rows.append(row)
        log(student=str(cfg), steps=args.steps, ssim_t=round(row["ssim"], 4), psnr_t=round(row["psnr"], 2),
            cpu_s=round(row["train_cpu_s"]), wall_s=round(row["train_wall_s"]))

    p50: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="pocketgan-pickq-") as tmp:
        paths = {}
        for i, row in enumerate(rows):
            folder = Path(tmp) / f"s{i}"
            export_artifact(row["model"], folder, task="benchmark", method="student", fast_graph=True)
            paths[str(i)] = folder / "model.onnx"
        shapes = {n: (1, 3, args.size, args.size) for n in paths}
        for threads in args.lat_threads:
            p50[threads] = measure_interleaved(paths, shapes, threads=threads, provider=PROVIDER, runs=args.runs,
                                               warmup=args.warmup)
            log(latency_threads=threads, p50_ms={rows[int(n)]["config"]: round(v, 2) for n, v in p50[threads].items()})

    ref = rows[0]
    print(f"\nStudents of the ngf-64 mobile-ResNet space trained {args.steps} steps each (same init seed, same batches) "
          f"by output distillation from vintagify on {len(c['src'])} photos; SSIM/PSNR to the teacher on "
          f"{len(c['test_src'])} held-out photos at {c['test_src'].shape[-1]} px. Latency: {args.size}x{args.size}, "
          f"ONNX Runtime CPU EP, fast_graph export, p50 of {args.runs} interleaved rounds, {table.hardware_tag}; "
          f"op table at {table.threads} thread(s). Ratios are against the {ref['config']} student.\n")
    lat_head = "".join(f" p50 ms {t}T | latency ratio {t}T |" for t in args.lat_threads)
    print(f"| student | GMACs | MACs ratio to teacher | table-predicted ms |{lat_head} SSIM→teacher | PSNR→teacher dB |"
          f" SSIM curve | train CPU s |")
    print("|---|---:|---:|---:|" + "---:|---:|" * len(args.lat_threads) + "---:|---:|---|---:|")
    for b in ("identity", "mean-image"):
        if b in baselines:
            blank = " - | - |" * len(args.lat_threads)
            print(f"| baseline: {b} | - | - | - |{blank} {baselines[b].ssim_to_teacher:.4f} | "
                  f"{baselines[b].psnr_to_teacher:.2f} | - | - |")
    for i, row in enumerate(rows):
        lat = "".join(f" {p50[t][str(i)]:.1f} | {p50[t]['0'] / p50[t][str(i)]:.2f}x |" for t in args.lat_threads)
        print(f"| {row['role']}: {row['config']} | {row['macs'] / 1e9:.2f} | {teacher_macs / row['macs']:.1f}x | "
              f"{row['predicted_ms']:.1f} |{lat} {row['ssim']:.4f} | {row['psnr']:.2f} | "
              f"{' '.join(row['curve']) or '-'} | {row['train_cpu_s']:.0f} |")


if __name__ == "__main__":
    main()
