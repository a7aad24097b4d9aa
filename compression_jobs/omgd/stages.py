"""`method: omgd` as one pipeline stage (`omgd`) between the shared teacher and export/publish.

With paired data the shared pipeline teacher is used only for the student width choice (MACs
budget) and for evaluation (PSNR/SSIM to it at export, `parent` of the published student): OMGD
trains its own two teachers online, from scratch, as published. With unpaired data (a CycleGAN
teacher, or `data.targets: false`) the shared teacher's outputs are the pseudo ground truth the
online teachers learn from (as the OMGD paper does for CycleGAN tasks): the student still
learns only from the online teachers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compression_jobs.data import ImageSet, TrainStream
from compression_jobs.gan_compression.common import progress, save_state
from compression_jobs.gan_compression.config import JobConfig
from compression_jobs.gan_compression.search import macs_at
from compression_jobs.models.mobile import ChannelConfig
from compression_jobs.models.resnet import ResnetGenerator
from compression_jobs.models.supernet import DEFAULT_MULTIPLIERS
from compression_jobs.omgd.distill import OnlineDistiller
from compression_jobs.pipeline import (
    MACS_RESOLUTION,
    Context,
    Method,
    Student,
    new_discriminator,
    load_student,
    run_teacher,
    macs_budget,
    new_student,
)

STAGE = "omgd"
STUDENT_FILE = "net_G.pth"
INFO_FILE = "omgd.json"


def omgd_steps(job: JobConfig) -> int:
    """Default step budget: GAN Compression's distill + supernet + finetune steps."""
    return job.omgd.steps or (job.distill.steps + job.supernet.steps + job.finetune.steps)


def uniform_configs(job: JobConfig) -> list[ChannelConfig]:
    """One config per width multiplier of the student space (every layer scaled alike), narrow first."""
    full = ChannelConfig.full(job.student.ngf)
    mults = sorted(job.student.channel_choices or DEFAULT_MULTIPLIERS)
    configs = []
    for m in mults:
        c = ChannelConfig(tuple(min(w, max(8, int(round(m * w / 8)) * 8)) for w in full))
        if c not in configs:
            configs.append(c)
    return configs


def choose_student(job: JobConfig, teacher_macs: int) -> tuple[ChannelConfig, int | None]:
    """`omgd.channel_config`, else the widest uniform config within the job's MACs budget."""
    budget = macs_budget(job, teacher_macs)
    if job.omgd.channel_config:
        return ChannelConfig.parse(job.omgd.channel_config), budget
    if budget is None:
        raise ValueError("omgd needs omgd.channel_config or a MACs budget (search.macs_budget / macs_budget_ratio)")
    fits = [c for c in uniform_configs(job) if macs_at(new_student(job, c), MACS_RESOLUTION) <= budget]
    if not fits:
        raise ValueError(f"no student width of the space fits the MACs budget {budget / 1e9:.3f} G at "
                         f"{MACS_RESOLUTION}px; set omgd.channel_config or a larger budget")
    return fits[-1], budget


def teachers(job: JobConfig) -> tuple[ResnetGenerator, ResnetGenerator]:
    """The wide teacher (student depth, more channels) and the deep teacher (student width, more blocks)."""
    o, st, d = job.omgd, job.student, job.data
    wide = ResnetGenerator(d.input_nc, d.output_nc, ngf=o.wide_ngf or st.ngf, n_blocks=st.n_blocks)
    deep = ResnetGenerator(d.input_nc, d.output_nc, ngf=o.deep_ngf or max(4, st.ngf // 2),
                           n_blocks=o.deep_n_blocks or 2 * st.n_blocks)
    return wide, deep


def build_distiller(job: JobConfig, config: ChannelConfig, train: ImageSet) -> OnlineDistiller:
    """Online teachers + their conditional discriminators (pairs: ground truth or the shared teacher's pseudo-pairs)."""
    wide, deep = teachers(job)
    sample = train.source[:1, :, : job.data.crop_size, : job.data.crop_size]
    return OnlineDistiller(job.omgd, wide=wide, deep=deep,
                           discriminators=[new_discriminator(job, True), new_discriminator(job, True)],
                           student=new_student(job, config), sample=sample, conditional_d=True)


def stage_omgd(ctx: Context, out: Path) -> dict:
    job = ctx.job
    teacher = run_teacher(ctx)
    teacher_macs = macs_at(teacher, MACS_RESOLUTION)
    config, budget = choose_student(job, teacher_macs)
    train = ImageSet(job.data, "train")
    distiller = build_distiller(job, config, train)
    dev = torch.device(job.device)
    for m in distiller.modules():
        m.to(dev).train()
    pseudo = not (train.paired and train.target is not None)
    if pseudo:
        teacher.to(dev).eval()
    steps = omgd_steps(job)
    stream = TrainStream(train, job.omgd.batch_size or job.distill.batch_size, job.seed)
    log: dict[str, float] = {}
    try:
        for step in progress(range(steps), steps, f"omgd (student {config})"):
            x, gt = stream.batch(step)
            x = x.to(dev)
            if pseudo:  # unpaired: the shared teacher's output is the pair
                with torch.no_grad():
                    gt = teacher(x)
            log = distiller.step(x, gt.to(dev))
    finally:
        distiller.close()
        for m in [*distiller.modules(), teacher]:
            m.cpu()
    save_state(distiller.student, out / STUDENT_FILE)
    for name, m in (("teacher_wide.pth", distiller.teachers[0]), ("teacher_deep.pth", distiller.teachers[1]),
                    ("net_D_wide.pth", distiller.discriminators[0]), ("net_D_deep.pth", distiller.discriminators[1])):
        save_state(m, out / name)
    if distiller.mapper is not None:
        save_state(distiller.mapper, out / "mapper.pth")
    info = {"channel_config": str(config), "steps": steps, "budget_macs": budget, "teacher_macs": teacher_macs,
            "student_macs": macs_at(distiller.student, MACS_RESOLUTION),
            "wide_teacher": {"ngf": distiller.teachers[0].ngf, "n_blocks": distiller.teachers[0].n_blocks},
            "deep_teacher": {"ngf": distiller.teachers[1].ngf, "n_blocks": distiller.teachers[1].n_blocks},
            "feature_terms": bool(distiller.encoders), "pseudo_pairs_from_teacher": pseudo, "losses": log}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def students(ctx: Context) -> list[Student]:
    d = ctx.require(STAGE)
    cfg = json.loads((d / INFO_FILE).read_text())["channel_config"]
    return [Student(cfg, lambda: load_student(ctx.job, cfg, d / STUDENT_FILE), {"channel_config": cfg})]


def summary(run_dir: Path) -> list[str]:
    p = run_dir / STAGE / INFO_FILE
    if not p.is_file():
        return []
    info = json.loads(p.read_text())
    budget = f"{info['budget_macs'] / 1e9:.3f}" if info.get("budget_macs") else "-"
    return [f"OMGD student {info['channel_config']}: {info['student_macs'] / 1e9:.3f} GMACs "
            f"(budget {budget}, teacher {info['teacher_macs'] / 1e9:.3f}) after {info['steps']} steps"]


METHOD = Method(name="omgd", stages=(STAGE,), stage_funcs={STAGE: stage_omgd}, students=students, summary=summary)
