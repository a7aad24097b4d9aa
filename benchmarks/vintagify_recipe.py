"""Which CPU recipe transfers the real vintagify teacher fastest? Side-by-side measurements.

Students of a given MACs reduction are trained for the same number of steps with output
distillation (teacher outputs as pseudo-pairs on photos = left halves of facades/train) and scored
by SSIM to the teacher on held-out photos (left halves of facades/test) at 128 px, next to the
identity baseline. Variants: student init (magnitude-pruned teacher vs. the same widths freshly
initialised vs. a MobileResNet), loss (L1 vs L1 + (1-SSIM)), lr schedule, crop size.

    PYTHONPATH=. python benchmarks/vintagify_recipe.py --steps 300 --ratios 10 30 --variants pruned-l1ssim-cos scratch-l1ssim-cos

Prints one line per run: variant, MACs ratio, steps, CPU seconds, SSIM/PSNR to the teacher.
The curve (MACs ratio vs SSIM to the teacher, with the baselines) from the printed lines of one or
more runs:

    python benchmarks/vintagify_recipe.py --plot docs/recipe_curve.png run1.jsonl run2.jsonl
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from compression_jobs.baselines import trivial_baselines
from compression_jobs.checkpoints import resolve_generator
from compression_jobs.coevolution.prune import magnitude_prune
from compression_jobs.counting import count_macs
from compression_jobs.data import DataConfig, ImageSet, resolve_root
from compression_jobs.gan_compression.evaluate import fidelity, outputs
from compression_jobs.metrics import ssim
from compression_jobs.pretrained import require_vintagify_teacher


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def reinit(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    for m in net.modules():
        if hasattr(m, "reset_parameters") and m is not net:
            m.reset_parameters()
    return net


def distill_data(data: str, max_train: int | None, cache: Path,
                 test_data: str | None = None) -> tuple[torch.nn.Module, dict, ImageSet, ImageSet]:
    """The vintagify teacher, its outputs as pseudo-targets, and the photo sets they are for.

    Photos are the left halves of `data` (pix2pix layout): training photos at 144 px (crops are
    cut from them), held-out photos at 128 px (from `test_data`'s test split when given). The
    teacher's outputs are computed once and cached in `cache` with these settings; a cache made with
    other settings is rebuilt, not reused.
    Returns (teacher, {"src", "tgt", "test_src", "test_t"}, train set, held-out set)."""
    teacher, _ = resolve_generator(require_vintagify_teacher())
    cfg = DataConfig(root=data, direction="AtoB", targets=False, load_size=144, crop_size=128, max_train=max_train)
    test_cfg = cfg.model_copy(update={"root": test_data}) if test_data else cfg
    train_set, test = ImageSet(cfg, "train"), ImageSet(test_cfg, "test")
    meta = {"data": str(resolve_root(data).resolve()), "test_data": str(resolve_root(test_data or data).resolve()),
            "max_train": max_train, "load_size": 144, "crop_size": 128,
            "n_train": len(train_set.source), "n_test": len(test.source)}
    c = torch.load(cache, weights_only=True) if cache.is_file() else {}
    if c.get("meta") != meta:
        c = {"src": train_set.source, "tgt": outputs(teacher, train_set, 8), "test_src": test.source,
             "test_t": outputs(teacher, test, 8), "meta": meta}
        torch.save(c, cache)
    return teacher, c, train_set, test


def train(student, src, tgt, *, steps, crop, batch, lr, loss, schedule, seed, on_eval=None, eval_every=0,
          flip=False) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(student.parameters(), lr=lr, betas=(0.5, 0.999))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cos"
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))
    student.train()
    n, load = src.shape[0], src.shape[-1]
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        y0, x0 = (int(v) for v in torch.randint(0, load - crop + 1, (2,), generator=g))
        x = src[idx, :, y0:y0 + crop, x0:x0 + crop]
        t = tgt[idx, :, y0:y0 + crop, x0:x0 + crop]
        if flip and step % 2:  # mirrored crop, mirrored cached teacher output (the teacher is ~flip-equivariant)
            x, t = x.flip(-1), t.flip(-1)
        s = student(x)
        total = F.l1_loss(s, t)
        if loss == "l1ssim":
            total = total + (1 - ssim(s, t)).mean().float()
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
        if on_eval is not None and eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            student.eval()
            on_eval(step + 1)
            student.train()
    student.eval()


def plot_curve(logs: list[Path], out: Path) -> None:
    """SSIM to the teacher against the MACs reduction, one point per finished run, baselines as lines."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    runs, baselines = [], {}
    for log in logs:
        for line in log.read_text().splitlines():
            row = json.loads(line)
            if "baselines" in row:
                baselines = row["baselines"]
            elif "widths" in row:
                runs.append(row)
    if not runs:
        raise SystemExit(f"no finished runs in {', '.join(map(str, logs))}")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    runs.sort(key=lambda r: r["ratio"])
    ax.plot([r["ratio"] for r in runs], [r["ssim_t"] for r in runs], "o-", color="tab:blue",
            label="student (pruned teacher, distilled)")
    for r in runs:
        ax.annotate(f"{r['ssim_t']:.3f}\n({r['steps']} steps)", (r["ratio"], r["ssim_t"]),
                    textcoords="offset points", xytext=(0, 8), fontsize=8, ha="center")
    styles = {"identity": ("tab:red", "--"), "mean-image": ("tab:gray", ":")}
    for name, value in baselines.items():
        color, ls = styles.get(name, ("black", "-."))
        ax.axhline(value, color=color, ls=ls, label=f"baseline: {name} ({value:.3f})")
    ax.set_xscale("log")
    ratios = [r["ratio"] for r in runs]
    ax.set_xticks(ratios, [f"{x:g}x" for x in ratios])
    ax.minorticks_off()
    ax.set_xlim(min(ratios) / 1.4, max(ratios) * 1.4)
    ax.set_xlabel("MACs reduction vs the teacher (x, log scale)")
    ax.set_ylabel("SSIM to the teacher (held-out photos, 128 px)")
    ax.set_title("vintagify teacher -> students on a CPU budget")
    ax.set_ylim(min(0.7, min(r["ssim_t"] for r in runs) - 0.02), max(r["ssim_t"] for r in runs) + 0.06)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plot", type=Path, default=None, help="only draw the curve from the given logs into this PNG")
    ap.add_argument("logs", nargs="*", type=Path, help="JSON-lines output of earlier runs (with --plot)")
    ap.add_argument("--data", default="../shared/data/facades", help="training photos (a folder or embedded:facades)")
    ap.add_argument("--test-data", default=None, help="held-out photos (default: --data's test split)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--ratios", type=float, nargs="+", default=[10.0, 30.0])
    ap.add_argument("--variants", nargs="+", default=["pruned-l1ssim-cos"])
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-train", type=int, default=160)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flip", action="store_true", help="mirror every other batch (input and cached teacher output)")
    ap.add_argument("--cache", default="/tmp/vintagify_cache.pt")
    ap.add_argument("--eval-every", type=int, default=0, help="also print SSIM every N steps (the convergence curve)")
    args = ap.parse_args()
    if args.plot is not None:
        plot_curve(args.logs, args.plot)
        return
    torch.set_num_threads(args.threads)
    teacher, c, train_set, test = distill_data(args.data, args.max_train, Path(args.cache), args.test_data)
    base = {b.name: b.ssim_to_teacher for b in trivial_baselines(test, train_set, c["test_t"], 8)}
    t_macs = count_macs(teacher, 256)
    print(json.dumps({"baselines": base, "teacher_gmacs": t_macs / 1e9, "train_images": len(c["src"])}), flush=True)
    for ratio in args.ratios:
        for variant in args.variants:
            init, loss, schedule = variant.split("-")
            student = magnitude_prune(teacher, t_macs / ratio)
            if init == "scratch":
                reinit(student, 0)
            macs = count_macs(student, 256)
            c0, w0 = cpu_seconds(), time.time()

            def on_eval(step: int, student=student, variant=variant) -> None:
                with torch.no_grad():
                    m = fidelity(student, test, c["test_t"], 8)
                print(json.dumps({"variant": variant, "ratio": round(t_macs / macs, 1), "at_step": step,
                                  "cpu_s": round(cpu_seconds() - c0), "wall_s": round(time.time() - w0),
                                  "ssim_t": round(m["ssim_to_teacher"], 4)}), flush=True)

            if args.steps:
                train(student, c["src"], c["tgt"], steps=args.steps, crop=args.crop, batch=args.batch, lr=args.lr,
                      loss=loss, schedule=schedule, seed=0, on_eval=on_eval, eval_every=args.eval_every,
                      flip=args.flip)
            with torch.no_grad():
                m = fidelity(student, test, c["test_t"], 8)
            print(json.dumps({"variant": variant, "ratio": round(t_macs / macs, 1), "widths": str(student.config),
                              "steps": args.steps, "crop": args.crop, "flip": args.flip,
                              "train_images": len(c["src"]), "batch": args.batch, "lr": args.lr,
                              "cpu_s": round(cpu_seconds() - c0), "wall_s": round(time.time() - w0),
                              "ssim_t": round(m["ssim_to_teacher"], 4), "psnr_t": round(m["psnr_to_teacher"], 2),
                              "beats_identity": m["ssim_to_teacher"] > base["identity"]}), flush=True)


if __name__ == "__main__":
    main()
