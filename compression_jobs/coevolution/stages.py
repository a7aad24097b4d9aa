"""`method: coevolution` in the shared pipeline: train-teacher → coevolve → prune-finetune → export → publish.

- ``coevolve``: one population of channel codes for the task's generator (A→B) scored with the
  teacher's trained discriminator; with unpaired data and a CycleGAN teacher (``latest_net_G_B.pth``,
  ``latest_net_D_A.pth`` from train-teacher) a second population for B→A, evolved alternately, each
  scored through the other's current best (cycle consistency). Writes ``coevolve.json`` and the
  compact (channels removed) generator ``net_G.pth``. Scoring runs on the CPU (each code is one
  small forward pass on ``coevolution.eval_images`` crops); ``job.device`` applies to fine-tuning.
  With ``coevolution.selection: magnitude`` there is no search: the channels with the largest norm
  scale are kept at the widest uniform fraction within the budget (one compact generator per budget:
  the job's and ``extra_budget_ratios``), a warm start that distils quickly on a CPU.
- ``prune-finetune``: trains the compact generator(s) with the shared distillation objective
  (``distill`` section's loss weights: L1 + feature maps to the teacher, GAN loss with a D
  initialised from the teacher's, + ground truth when paired) for ``coevolution.finetune_steps``
  (``extra_finetune_steps`` for the extra budgets' students).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compression_jobs.coevolution.prune import ChannelGroups, PrunedWidths, build_pruned, magnitude_prune, prune_generator
from compression_jobs.coevolution.search import Side, coevolve
from compression_jobs.counting import count_macs, count_params
from compression_jobs.data import ImageSet, TrainStream
from compression_jobs.gan_compression.common import counter_bar, load_state, save_state
from compression_jobs.gan_compression.distill import train_distill
from compression_jobs.pipeline import (
    MACS_RESOLUTION,
    Context,
    Method,
    Student,
    new_discriminator,
    distill_parts,
    run_teacher,
    macs_budget,
    teacher_template,
)
from compression_jobs.teacher import D_NAME, load_teacher

SEARCH_FILE = "coevolve.json"
G_FILE = "net_G.pth"
G_B_NAME, D_A_NAME = "latest_net_G_B.pth", "latest_net_D_A.pth"  # CycleGAN teacher's second pair


def _teacher_d(ctx: Context, path: Path, paired: bool, notes: list[str]) -> torch.nn.Module | None:
    """The discriminator teacher training produced (conditional when paired), or None if there is none."""
    if not path.is_file():
        notes.append(f"no trained discriminator {path.name}: the discriminator-aware term is left out")
        return None
    d = new_discriminator(ctx.job, paired)
    d.load_state_dict(load_state(path))
    return d.eval()


def stage_magnitude(ctx: Context, out: Path) -> dict:
    """`selection: magnitude`: one compact generator per budget, channels ranked by magnitude (no search)."""
    job, cfg = ctx.job, ctx.job.coevolution
    teacher = run_teacher(ctx)
    teacher_macs = count_macs(teacher, MACS_RESOLUTION)
    budgets = [b for b in [macs_budget(job, teacher_macs)] if b is not None]
    budgets += [int(r * teacher_macs) for r in cfg.extra_budget_ratios]
    if not budgets:
        raise ValueError("magnitude selection needs a MACs budget (search.macs_budget / macs_budget_ratio)")
    students = []
    for i, budget in enumerate(budgets):
        compact = magnitude_prune(teacher, budget, MACS_RESOLUTION)
        name = G_FILE if i == 0 else f"net_G_{i}.pth"
        save_state(compact, out / name)
        students.append({"channel_config": str(compact.config), "file": name, "budget_macs": budget,
                         "macs": count_macs(compact, MACS_RESOLUTION), "params": count_params(compact)})
    first = students[0]
    cost = {"teacher_macs": teacher_macs, "teacher_params": count_params(teacher), "macs": first["macs"],
            "params": first["params"], "macs_resolution": MACS_RESOLUTION, "budget_macs": budgets[0],
            "within_budget": first["macs"] <= budgets[0]}
    data = {"selection": "magnitude", "channel_config": first["channel_config"], "students": students, "cost": cost,
            "notes": ["channels kept by magnitude (norm scale, else filter L1), uniform fraction per budget; no search"]}
    (out / SEARCH_FILE).write_text(json.dumps(data, indent=2))
    return {"selection": "magnitude", "students": [{k: s[k] for k in ("channel_config", "macs")} for s in students],
            "macs_reduction": [round(teacher_macs / s["macs"], 2) for s in students]}


def stage_coevolve(ctx: Context, out: Path) -> dict:
    job, cfg = ctx.job, ctx.job.coevolution
    if cfg.selection == "magnitude":
        return stage_magnitude(ctx, out)
    teacher_dir = ctx.require("train-teacher")
    teacher = run_teacher(ctx)
    train = ImageSet(job.data, "train")
    x_a, x_b = TrainStream(train, cfg.eval_images, job.seed + 7).batch(0)
    notes: list[str] = []
    teacher_macs = count_macs(teacher, MACS_RESOLUTION)
    weights = cfg.weights(macs_budget(job, teacher_macs))
    d_b = _teacher_d(ctx, teacher_dir / D_NAME, train.paired, notes)
    if d_b is None:
        weights = weights.model_copy(update={"lambda_dis": 0.0})
    sides = [Side("AtoB", teacher, d_b, x_a, train.paired, ChannelGroups(teacher, cfg.prune_stream))]
    if not train.paired:
        if (teacher_dir / G_B_NAME).is_file() and x_b is not None:
            g_ba = load_teacher(job.teacher, teacher_dir / G_B_NAME, job.data.output_nc, job.data.input_nc)
            d_a = _teacher_d(ctx, teacher_dir / D_A_NAME, False, notes)
            sides.append(Side("BtoA", g_ba, d_a, x_b, False, ChannelGroups(g_ba, cfg.prune_stream)))
        else:
            notes.append("unpaired data but no B→A teacher: one population, reconstruction to the teacher instead "
                         "of cycle consistency")
    with counter_bar("coevolve (codes scored)") as bar:
        result = coevolve(sides, cfg.ga(), cfg.generations, weights, seed=job.seed, progress_cb=bar.update)
    best = result.sides[0]
    compact = prune_generator(teacher, sides[0].groups.masks(torch.tensor(best.best_code)))
    save_state(compact, out / G_FILE)
    cost = {
        "teacher_macs": teacher_macs, "teacher_params": count_params(teacher),
        "macs": count_macs(compact, MACS_RESOLUTION), "params": count_params(compact),
        "macs_resolution": MACS_RESOLUTION, "budget_macs": weights.budget_macs,
    }
    cost["within_budget"] = weights.budget_macs is None or cost["macs"] <= weights.budget_macs
    if not cost["within_budget"]:
        notes.append(f"best code has {cost['macs']:,} MACs, over the budget {weights.budget_macs:,}: "
                     f"raise coevolution.budget_penalty or generations")
    data = {"channel_config": best.channel_config, "result": result.model_dump(), "cost": cost, "notes": notes,
            "weights": weights.model_dump(), "prune_stream": cfg.prune_stream}
    (out / SEARCH_FILE).write_text(json.dumps(data, indent=2))
    return {"channel_config": best.channel_config, "evaluated": result.evaluated, "best": best.best.model_dump(),
            "macs_reduction": round(cost["teacher_macs"] / cost["macs"], 3), "within_budget": cost["within_budget"],
            "notes": notes,
            "history": {s.name: s.history for s in result.sides}}


def _searched(ctx: Context) -> tuple[Path, list[tuple[PrunedWidths, str]]]:
    """The coevolve stage's compact generators: (widths, file name), the budget's student first."""
    d = ctx.require("coevolve")
    data = json.loads((d / SEARCH_FILE).read_text())
    entries = data.get("students") or [{"channel_config": data["channel_config"], "file": G_FILE}]
    return d, [(PrunedWidths.parse(e["channel_config"]), e["file"]) for e in entries]


def compact_student(ctx: Context, widths: PrunedWidths, path: Path) -> torch.nn.Module:
    net = build_pruned(teacher_template(ctx), widths)
    net.load_state_dict(load_state(path))
    return net.eval()


def stage_prune_finetune(ctx: Context, out: Path) -> dict:
    job, cfg = ctx.job, ctx.job.coevolution
    d, found = _searched(ctx)
    teacher = run_teacher(ctx)
    train = ImageSet(job.data, "train")
    logs, targets = {}, {}  # targets: the teacher's cached outputs, computed once for all students
    for i, (widths, name) in enumerate(found):
        student = compact_student(ctx, widths, d / name)
        parts = distill_parts(ctx, student, teacher, train, None)
        logs[str(widths)] = train_distill(
            teacher=teacher, parts=parts, train=train, cfg=job.distill, steps=cfg.steps_for(i), lr=cfg.finetune_lr,
            batch_size=job.distill.batch_size, seed=job.seed + 3 + i, conditional_d=train.paired,
            desc=f"prune-finetune {widths}", device=job.device, mixed_precision=job.mixed_precision,
            target_cache=targets)
        save_state(student, out / name)
    first = str(found[0][0])
    return {"channel_config": first, "students": list(logs), "steps": [cfg.steps_for(i) for i in range(len(found))],
            "losses": logs[first]}


def _students(ctx: Context) -> list[Student]:
    _, found = _searched(ctx)
    ft = ctx.require("prune-finetune")
    how = ("magnitude channel pruning" if ctx.job.coevolution.selection == "magnitude"
           else "co-evolutionary channel pruning")
    return [Student(str(w), lambda w=w, name=name: compact_student(ctx, w, ft / name),
                    {"channel_config": str(w), "pruned_from": f"teacher ({how})"}) for w, name in found]


def _summary(run_dir: Path) -> list[str]:
    p = run_dir / "coevolve" / SEARCH_FILE
    if not p.is_file():
        return []
    data = json.loads(p.read_text())
    c = data["cost"]
    if data.get("selection") == "magnitude":
        return [f"magnitude-pruned: {s['channel_config']}  {s['macs'] / 1e9:.3f} GMACs "
                f"({c['teacher_macs'] / s['macs']:.2f}x fewer), params {s['params']:,} of {c['teacher_params']:,}"
                for s in data["students"]]
    lines = [f"co-evolution best: {data['channel_config']}  {c['macs'] / 1e9:.3f} GMACs "
             f"({c['teacher_macs'] / c['macs']:.2f}x fewer), params {c['params']:,} of {c['teacher_params']:,}"]
    for s in data["result"]["sides"]:
        h = s["history"]
        lines.append(f"  {s['name']}: best loss {h[0]:.4f} → {h[-1]:.4f} over {len(h) - 1} generations")
    return lines


METHOD = Method(
    name="coevolution",
    stages=("coevolve", "prune-finetune"),
    stage_funcs={"coevolve": stage_coevolve, "prune-finetune": stage_prune_finetune},
    students=_students,
    summary=_summary,
)
