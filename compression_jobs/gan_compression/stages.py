"""`method: gan-compression` (the default) in the shared pipeline:
train-teacher → distill → train-supernet → search → finetune → export → publish.

- ``distill``: the largest student (the supernet at its max config) distilled from the teacher.
- ``train-supernet``: once-for-all training, one sampled channel config per step.
- ``search``: evolutionary search of sub-networks scored straight from the supernet under the
  MACs or latency budget; writes ``search.json`` (every scored config, Pareto front, chosen).
- ``finetune``: each chosen config extracted and trained with the same distillation objective.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from compression_jobs.data import ImageSet
from compression_jobs.gan_compression.common import counter_bar, load_state, progress, save_state, seed_everything
from compression_jobs.gan_compression.config import JobConfig
from compression_jobs.gan_compression.distill import DistillParts, supernet_sampler, train_distill
from compression_jobs.gan_compression.search import LatencyModel, LatencyPredictor, evolutionary_search, macs_at
from compression_jobs.models.mobile import ChannelConfig
from compression_jobs.models.supernet import ChannelSpace, SuperMobileResnetGenerator
from compression_jobs.pipeline import (
    MACS_RESOLUTION,
    Context,
    Method,
    Student,
    distill_parts,
    held_out,
    load_student,
    macs_budget,
    profile_provider,
    read_state,
    run_teacher,
    teacher_outputs_store,
)

STAGES: tuple[str, ...] = ("distill", "train-supernet", "search", "finetune")
SUPERNET_FILE = "supernet.pth"
SEARCH_FILE = "search.json"
STUDENT_FILE = "net_G.pth"


def student_space(job: JobConfig) -> ChannelSpace:
    """The job's once-for-all design space (student.ngf widths x student.channel_choices)."""
    kw = {"multipliers": job.student.channel_choices} if job.student.channel_choices else {}
    return ChannelSpace.from_multipliers(ChannelConfig.full(job.student.ngf), **kw)


def _new_supernet(job: JobConfig) -> SuperMobileResnetGenerator:
    return SuperMobileResnetGenerator(student_space(job), job.student.n_blocks, job.data.input_nc, job.data.output_nc)


def _trained_supernet(ctx: Context, stage: str) -> SuperMobileResnetGenerator:
    """The supernet as `stage` (distill or train-supernet) left it."""
    sn = _new_supernet(ctx.job)
    sn.load_state_dict(load_state(ctx.require(stage) / SUPERNET_FILE))
    return sn


def _save_parts(parts: DistillParts, out: Path, student_name: str) -> None:
    save_state(parts.student, out / student_name)
    save_state(parts.discriminator, out / "net_D.pth")
    if parts.mapper is not None:
        save_state(parts.mapper, out / "mapper.pth")


def stage_distill(ctx: Context, out: Path) -> dict:
    job = ctx.job
    teacher = run_teacher(ctx)
    train = ImageSet(job.data, "train")
    sn = _new_supernet(job)
    parts = distill_parts(ctx, sn, teacher, train, None)
    largest = sn.space.largest()
    log = train_distill(teacher=teacher, parts=parts, train=train, cfg=job.distill, steps=job.distill.steps,
                        lr=job.distill.lr, batch_size=job.distill.batch_size, seed=job.seed,
                        conditional_d=train.paired, sample_config=lambda _k: largest, desc="distill (largest student)",
                        device=job.device, mixed_precision=job.mixed_precision,
                        target_store=teacher_outputs_store(ctx))
    _save_parts(parts, out, SUPERNET_FILE)
    return {"losses": log, "max_config": str(largest)}


def stage_train_supernet(ctx: Context, out: Path) -> dict:
    job = ctx.job
    teacher = run_teacher(ctx)
    train = ImageSet(job.data, "train")
    sn = _trained_supernet(ctx, "distill")
    parts = distill_parts(ctx, sn, teacher, train, "distill")
    log = train_distill(teacher=teacher, parts=parts, train=train, cfg=job.distill, steps=job.supernet.steps,
                        lr=job.supernet.lr, batch_size=job.distill.batch_size, seed=job.seed + 1,
                        conditional_d=train.paired,
                        sample_config=supernet_sampler(sn.space, job.seed, job.supernet.sandwich),
                        desc="train-supernet (once-for-all)", device=job.device,
                        mixed_precision=job.mixed_precision, target_store=teacher_outputs_store(ctx))
    _save_parts(parts, out, SUPERNET_FILE)
    return {"losses": log, "space_size": sn.space.size}


def _fit_latency(ctx: Context, sn: SuperMobileResnetGenerator, out: Path) -> LatencyPredictor:
    """The tag's op latency table (`search.latency_table`'s file, else the registry's when it has
    one: any device), else, for this machine only, a few configs measured here and a fit of ms ≈ a + b·MACs."""
    from compression_jobs.hardware import resolve_hardware_tag
    from compression_jobs.latency_table import TableLatencyModel, fetch_table, read_table_file

    s = ctx.job.search
    here = resolve_hardware_tag(None, profile_provider(ctx.job))
    tag = resolve_hardware_tag(s.hardware_tag) if s.hardware_tag else here
    if s.latency_table:
        table = read_table_file(s.latency_table, tag)
    else:
        table = fetch_table(ctx.registry, tag, required=tag != here)
    if table is not None:
        return TableLatencyModel.for_space(table, sn.space, sn.n_blocks, resolution=ctx.job.export.resolution,
                                           input_nc=sn.input_nc, output_nc=sn.output_nc,
                                           fast_graph=ctx.job.export.fast_graph)
    space = sn.space
    rng = random.Random(ctx.job.seed)
    configs = [space.smallest(), space.largest()]
    while len(configs) < min(s.latency_points, space.size):
        c = space.sample(rng)
        if c not in configs:
            configs.append(c)
    points = []
    for cfg in progress(configs, len(configs), "latency points"):
        student = sn.extract(cfg).eval()
        ms = _measure(ctx, student, out / "latency" / str(cfg))
        points.append((macs_at(student, MACS_RESOLUTION), ms))
    return LatencyModel.fit(points, tag)


def _measure(ctx: Context, model: torch.nn.Module, folder: Path) -> float:
    """p50 latency (ms) of the exported ONNX graph at the export resolution on this machine."""
    from compression_jobs.export import export_onnx
    from compression_jobs.profiling import profile_model

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    export_onnx(model, path, resolution=ctx.job.export.resolution, opset=ctx.job.export.opset,
                fast_graph=ctx.job.export.fast_graph)
    r = ctx.job.export.resolution
    prof = profile_model(path, resolutions=[(r, r)], runs=ctx.job.export.profile_runs,
                         threads=ctx.job.export.profile_threads, provider=profile_provider(ctx.job), progress=False)
    return float(prof.nearest(r, r).p50_ms)


def stage_search(ctx: Context, out: Path) -> dict:
    job, s = ctx.job, ctx.job.search
    test, teacher_out, teacher = held_out(ctx)
    sn = _trained_supernet(ctx, "train-supernet")
    sn.eval()
    teacher_macs = macs_at(teacher, MACS_RESOLUTION)
    budget_macs = macs_budget(job, teacher_macs)
    latency = _fit_latency(ctx, sn, out) if s.latency_budget_ms is not None else None
    with counter_bar("search (sub-networks scored)") as bar:
        result = evolutionary_search(
            sn, test, teacher_out, s, resolution=MACS_RESOLUTION, budget_macs=budget_macs, latency=latency,
            seed=job.seed, batch_size=job.eval_batch_size, progress_cb=bar.update, device=job.device,
        )
    data = result.to_json()
    data["teacher_macs"] = teacher_macs
    data["macs_resolution"] = MACS_RESOLUTION
    (out / SEARCH_FILE).write_text(json.dumps(data, indent=2))
    return {"chosen": result.chosen, "pareto": result.pareto, "budget_macs": budget_macs,
            "budget_latency_ms": s.latency_budget_ms, "evaluated": len(result.evaluated)}


def _chosen(ctx: Context) -> list[str]:
    return json.loads((ctx.require("search") / SEARCH_FILE).read_text())["chosen"]


def stage_finetune(ctx: Context, out: Path) -> dict:
    job = ctx.job
    teacher = run_teacher(ctx)
    train = ImageSet(job.data, "train")
    sn = _trained_supernet(ctx, "train-supernet")
    results = {}
    targets: dict = {}  # cache_teacher: the teacher's outputs computed once for every chosen config
    for i, cfg in enumerate(_chosen(ctx)):
        seed_everything(job.seed * 100 + 50 + i, job.deterministic)
        student = sn.extract(cfg)
        parts = distill_parts(ctx, student, teacher, train, "train-supernet", widths_from=sn)
        log = train_distill(teacher=teacher, parts=parts, train=train, cfg=job.distill, steps=job.finetune.steps,
                            lr=job.finetune.lr, batch_size=job.distill.batch_size, seed=job.seed + 2 + i,
                            conditional_d=train.paired, desc=f"finetune {cfg}", device=job.device,
                            mixed_precision=job.mixed_precision, target_cache=targets,
                            target_store=teacher_outputs_store(ctx))
        save_state(student, out / cfg / STUDENT_FILE)
        results[cfg] = log
    return {"finetuned": list(results), "losses": results}


def students(ctx: Context) -> list[Student]:
    """One student per chosen config, from finetune/<config>/net_G.pth."""
    ft = ctx.require("finetune")
    return [Student(cfg, lambda cfg=cfg: load_student(ctx.job, cfg, ft / cfg / STUDENT_FILE), {"channel_config": cfg})
            for cfg in _chosen(ctx)]


def summary(run_dir: Path) -> list[str]:
    """`compress status`: the search's Pareto front, chosen points starred."""
    search = run_dir / "search" / SEARCH_FILE
    if "search" not in read_state(run_dir).get("completed", {}) or not search.is_file():
        return []
    data = json.loads(search.read_text())
    by = {c["config"]: c for c in data["evaluated"]}
    lines = [f"Pareto front ({len(data['evaluated'])} sub-networks scored; * = chosen):"]
    for cfg in data["pareto"]:
        c = by[cfg]
        lat = f"{c['predicted_latency_ms']:.2f} ms" if c.get("predicted_latency_ms") is not None else "-"
        lines.append(f"  {'*' if cfg in data['chosen'] else ' '} {cfg:32s} {c['macs'] / 1e9:8.3f} GMACs  "
                     f"SSIM {c['ssim_to_teacher']:.3f}  PSNR {c['psnr_to_teacher']:.2f}  {lat}")
    return lines


METHOD = Method(
    name="gan-compression",
    stages=STAGES,
    stage_funcs={"distill": stage_distill, "train-supernet": stage_train_supernet, "search": stage_search,
                 "finetune": stage_finetune},
    students=students,
    summary=summary,
)
