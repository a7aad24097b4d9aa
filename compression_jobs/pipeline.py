"""Compression jobs as resumable stages: shared teacher → method stages → shared export → publish.

Every method runs ``train-teacher`` first and ``export``, ``publish`` last (shared: teacher,
data, held-out evaluation, ONNX export + parity + profile, publishing); the stages in between
come from the method named by ``job.method``: a :class:`Method` in the module
``METHOD_MODULES`` names (``gan_compression/stages.py``, ``omgd/stages.py``,
``coevolution/stages.py``; see compression_jobs/METHODS.md).

Each stage reads earlier stages' outputs from the run directory, writes its own outputs into a
temporary folder that is renamed to ``RUN_DIR/<stage>/`` only when the stage succeeds, and is
then recorded in ``RUN_DIR/state.json``. So an interrupted or failed stage leaves earlier
outputs intact, and ``--resume`` continues with the first stage that has not completed.

Every stage re-seeds from (seed, stage) and reloads its inputs from disk, so a resumed run
computes exactly what an uninterrupted run computes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import yaml

from compression_jobs.data import ImageSet
from compression_jobs.gan_compression.common import load_state, progress, save_state, seed_everything
from compression_jobs.gan_compression.config import JobConfig
from compression_jobs.gan_compression.distill import DistillParts, make_mapper
from compression_jobs.gan_compression.evaluate import fid_kid, fidelity, outputs
from compression_jobs.models.mobile import ChannelConfig, MobileResnetGenerator
from compression_jobs.teacher import D_NAME, G_NAME, build_discriminator, load_teacher, train_teacher

SHARED_HEAD: tuple[str, ...] = ("train-teacher",)
SHARED_TAIL: tuple[str, ...] = ("export", "publish")
DEFAULT_METHOD: str = JobConfig.model_fields["method"].default
"""A config's `method:` when it names none (gan-compression), and a run's when its state.json predates the field."""
STATE_FILE = "state.json"
CACHE_DIR = "cache"  # data a run computes once for several stages (not a stage output)


class StageFailed(RuntimeError):
    """A stage raised; earlier stages' outputs are kept and `--resume` retries from this stage."""

    def __init__(self, stage: str, cause: BaseException):
        super().__init__(f"stage {stage!r} failed: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


@dataclass
class Context:
    job: JobConfig
    run_dir: Path
    inception_weights: Path | None = None
    registry: object | None = None  # registry.client.Registry; None → Registry.from_env() at publish
    publish_all: bool = False  # also publish students flagged below_baseline (CLI --publish-all)

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def require(self, stage: str) -> Path:
        d = self.stage_dir(stage)
        if stage not in completed_stages(self.run_dir):
            raise RuntimeError(f"needs stage {stage!r} to have completed in {self.run_dir}; run it first")
        return d


# ----------------------------------------------------------------------------- state


def config_digest(job: JobConfig) -> str:
    return hashlib.sha256(job.model_dump_json().encode()).hexdigest()[:16]


def read_state(run_dir: Path) -> dict:
    p = run_dir / STATE_FILE
    return json.loads(p.read_text()) if p.is_file() else {"completed": {}}


def completed_stages(run_dir: Path) -> list[str]:
    """Completed stages in the order of the run's method (recorded in state.json)."""
    state = read_state(run_dir)
    done = state.get("completed", {})
    try:
        order = stages_for(state.get("method", DEFAULT_METHOD))
    except MethodUnavailable:
        order = tuple(done)
    return [s for s in order if s in done]


def _write_state(run_dir: Path, state: dict) -> None:
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(run_dir / STATE_FILE)


# ----------------------------------------------------------------------------- helpers


TEACHER_SPEC_FILE = "teacher_arch.json"
"""train-teacher/teacher_arch.json: the teacher's builder arguments (arch, ngf, n_blocks, norm, …)."""


def teacher_spec(ctx: Context) -> dict:
    """The run's teacher architecture as recorded by train-teacher (inferred for a given checkpoint)."""
    p = ctx.require("train-teacher") / TEACHER_SPEC_FILE
    if p.is_file():
        return json.loads(p.read_text())
    return trained_teacher_spec(ctx.job)  # runs made before the spec file existed


def trained_teacher_spec(job: JobConfig) -> dict:
    """Builder arguments of the teacher the config trains."""
    t = job.teacher
    depth = {"n_blocks": t.n_blocks} if t.arch == "resnet" else {"num_downs": t.num_downs}
    return {"arch": t.arch, "ngf": t.ngf, **depth, "norm": t.norm, "use_dropout": False,
            "input_nc": job.data.input_nc, "output_nc": job.data.output_nc}


def teacher_template(ctx: Context) -> torch.nn.Module:
    """A freshly initialised generator with the run's teacher architecture (e.g. to rebuild a pruned copy)."""
    from compression_jobs.models import build_generator

    spec = dict(teacher_spec(ctx))
    return build_generator(spec.pop("arch"), **spec)


def run_teacher(ctx: Context) -> torch.nn.Module:
    from compression_jobs.checkpoints import load_state_dict_strict

    d = ctx.require("train-teacher")
    net = teacher_template(ctx)
    return load_state_dict_strict(net, load_state(d / G_NAME), source=str(d / G_NAME)).eval()


def new_discriminator(job: JobConfig, paired: bool) -> torch.nn.Module:
    nc = job.data.input_nc + job.data.output_nc if paired else job.data.output_nc
    return build_discriminator(job.teacher, nc)


def distill_parts(ctx: Context, student: torch.nn.Module, teacher: torch.nn.Module, train: ImageSet,
           from_stage: str | None, widths_from: torch.nn.Module | None = None) -> DistillParts:
    """Student + 1x1 mappers + discriminator; D initialised from the teacher's (or an earlier stage's).

    Mappers are sized for the supernet's largest widths (`widths_from`, default the student), so
    an extracted sub-network reuses them through input-column slicing.
    """
    job = ctx.job
    sample = train.source[:1, :, : job.data.crop_size, : job.data.crop_size]
    mapper, t_layers, s_layers = make_mapper(teacher, widths_from or student, job.distill.distill_layers, sample)
    D = new_discriminator(job, train.paired)
    if from_stage is not None:
        d = ctx.stage_dir(from_stage)
        if mapper is not None:
            mapper.load_state_dict(load_state(d / "mapper.pth"))
        D.load_state_dict(load_state(d / "net_D.pth"))
    else:
        d_path = ctx.stage_dir("train-teacher") / D_NAME
        if d_path.is_file():
            D.load_state_dict(load_state(d_path))
    return DistillParts(student, mapper, D, t_layers, s_layers)


def teacher_outputs_store(ctx: Context) -> Path:
    """Where `distill.cache_teacher` keeps the teacher's outputs on the training images for every
    stage of the run (checked against the teacher and images before use)."""
    return ctx.run_dir / CACHE_DIR / "teacher-train-outputs.pt"


def held_out(ctx: Context) -> tuple[ImageSet, torch.Tensor, torch.nn.Module]:
    test = ImageSet(ctx.job.data, "test")
    teacher = run_teacher(ctx)
    return test, outputs(teacher, test, ctx.job.eval_batch_size), teacher


# ----------------------------------------------------------------------------- stages


def adopt_teacher(job: JobConfig, out: Path) -> tuple[torch.nn.Module, dict]:
    """Load `teacher.checkpoint` with the one checkpoint loader (layout normalised, architecture
    inferred, explicit teacher fields override) and save it in the reference layout to `out`."""
    from compression_jobs.checkpoints import detect_arch, read_state_dict, resolve_generator

    src = Path(job.teacher.checkpoint).expanduser()
    over = job.teacher.arch_overrides()
    arch = over.pop("arch", None) or detect_arch(read_state_dict(src))
    model, spec = resolve_generator(src, arch=arch, **over)
    nc = (job.data.input_nc, job.data.output_nc)
    if (spec.get("input_nc"), spec.get("output_nc")) != nc:
        raise ValueError(f"{src}: the teacher maps {spec.get('input_nc')} to {spec.get('output_nc')} channels but the "
                         f"data config has input_nc={nc[0]}, output_nc={nc[1]}")
    save_state(model, out / G_NAME)
    (out / TEACHER_SPEC_FILE).write_text(json.dumps(spec, indent=2))
    if job.teacher.discriminator:
        shutil.copyfile(Path(job.teacher.discriminator).expanduser(), out / D_NAME)
    return model, spec


def stage_train_teacher(ctx: Context, out: Path) -> dict:
    job = ctx.job
    if job.teacher.checkpoint:
        teacher, spec = adopt_teacher(job, out)
        info = {"mode": "given", "checkpoint": str(Path(job.teacher.checkpoint).expanduser()), "architecture": spec}
    else:
        info = train_teacher(job, out)
        (out / TEACHER_SPEC_FILE).write_text(json.dumps(trained_teacher_spec(job), indent=2))
        teacher = load_teacher(job.teacher, out / G_NAME, job.data.input_nc, job.data.output_nc)
    test = ImageSet(job.data, "test")
    info["quality"] = fidelity(teacher, test, None, job.eval_batch_size)
    return info


MACS_RESOLUTION = 256
"""Budgets and search MACs are per image at 256x256, the manifests' reference resolution."""


def macs_budget(job: JobConfig, teacher_macs: int) -> int | None:
    """The job's MACs budget at 256x256 (search.macs_budget, or the ratio times the teacher's); shared by methods."""
    s = job.search
    if s.macs_budget is not None:
        return int(s.macs_budget)
    return int(s.macs_budget_ratio * teacher_macs) if s.macs_budget_ratio is not None else None


def profile_provider(job: JobConfig) -> str | None:
    """Profile on CPU for CPU jobs; otherwise let the runtime pick (CUDA when it really works)."""
    return "CPUExecutionProvider" if job.device == "cpu" else None


def new_student(job: JobConfig, config: ChannelConfig | str) -> MobileResnetGenerator:
    """A fresh MobileResNet student of the job's student space with channel widths `config`."""
    return MobileResnetGenerator(ChannelConfig.parse(config), n_blocks=job.student.n_blocks,
                                 input_nc=job.data.input_nc, output_nc=job.data.output_nc)


def load_student(job: JobConfig, cfg: str, path: Path) -> MobileResnetGenerator:
    net = new_student(job, cfg)
    net.load_state_dict(load_state(path))
    return net.eval()


def measure_quality(ctx: Context, model: torch.nn.Module, test: ImageSet, teacher_out: torch.Tensor | None,
             baselines: list | None = None):
    """Quality of `model` on the held-out split; with `baselines` (students) they are recorded next to
    its figures and `below_baseline` says whether it beats the best trivial one (SSIM to the teacher)."""
    from compression_jobs.baselines import below_baseline, best_trivial
    from registry.manifest import Quality

    job = ctx.job
    m = fidelity(model, test, teacher_out, job.eval_batch_size)
    q = Quality(dataset=job.data.dataset_name, split=job.data.test_split, n_images=len(test),
                resolution=job.data.crop_size, **m)
    if teacher_out is None:
        q.notes.append("this is the teacher: fidelity to the teacher is by definition perfect and not reported")
    if baselines:
        q.baselines = list(baselines)
        q.below_baseline = below_baseline(q.ssim_to_teacher, q.baselines)
        best = best_trivial(q.baselines)
        if q.below_baseline:
            q.notes.append(f"below baseline: SSIM to teacher {q.ssim_to_teacher:.3f} does not beat the trivial "
                           f"'{best.name}' baseline ({best.ssim_to_teacher:.3f})")
    weights = ctx.inception_weights or (Path(job.inception_weights) if job.inception_weights else None)
    if weights is not None and (test.target is not None or teacher_out is not None):
        fake = outputs(model, test, job.eval_batch_size)
        if test.target is not None:
            fk = fid_kid(weights, fake, test.target, job.eval_batch_size)
            q.fid, q.kid = fk["fid"], fk["kid"]
        if teacher_out is not None:
            q.fid_to_teacher = fid_kid(weights, fake, teacher_out, job.eval_batch_size)["fid"]
        q.notes.append(f"FID/KID against {len(test)} held-out {'real target images' if test.target is not None else ''}"
                       f"{' and ' if test.target is not None and teacher_out is not None else ''}"
                       f"{'teacher outputs' if teacher_out is not None else ''} with {Path(weights).name} "
                       f"(tiny sets: indicative only)")
    else:
        q.notes.append("FID/KID not computed: no --inception-weights given")
    q.notes.append(f"PSNR/SSIM on the held-out split at {job.data.crop_size}x{job.data.crop_size}, "
                   f"images in [0,1]; SSIM gaussian window 11, sigma 1.5")
    return q


def add_profile(job: JobConfig, folder: Path, manifest):  # noqa: ANN201 - registry.manifest.Manifest
    """Measure the artifact's latency on this machine at the export resolution; rewrite its manifest."""
    from compression_jobs.profiling import profile_model
    from registry.artifact import write_manifest

    r = job.export.resolution
    prof = profile_model(folder / manifest.model_file, resolutions=[(r, r)], runs=job.export.profile_runs,
                         threads=job.export.profile_threads, provider=profile_provider(job), progress=False)
    manifest = manifest.with_profile(prof)
    write_manifest(folder, manifest)
    return manifest


ARTIFACTS_FILE = "artifacts.json"
"""export/artifacts.json: {folder name: artifact id}, teacher first; publish publishes these folders."""


def stage_export(ctx: Context, out: Path) -> dict:
    """ONNX export (with parity check), quality metrics and a latency profile for teacher and students."""
    from compression_jobs.export import export_artifact

    job = ctx.job
    test, teacher_out, teacher = held_out(ctx)
    job_info = {"name": job.name, "config_digest": config_digest(job), "seed": job.seed}
    r = job.export.resolution
    exported = {}

    def one(model: torch.nn.Module, folder: Path, method: str, parent: str | None, quality, extra: dict) -> str:
        manifest = export_artifact(model, folder, task=job.task, method=method, parent=parent, quality=quality,
                                   job={**job_info, **extra}, opset=job.export.opset, resolution=r,
                                   fast_graph=job.export.fast_graph)
        if job.export.profile:
            manifest = add_profile(job, folder, manifest)
        return manifest.artifact_id

    teacher_q = measure_quality(ctx, teacher, test, None)
    teacher_id = one(teacher, out / "teacher", "teacher", None, teacher_q, {"role": "teacher"})
    exported["teacher"] = teacher_id
    baselines = run_baselines(ctx, test, teacher_out, teacher_q.model_dump())
    method = get_method(job.method)
    students = method.students(ctx)
    for st in progress(students, len(students), "export + profile"):
        student = st.load()
        exported[st.name] = one(student, out / st.name, method.name, teacher_id,
                                measure_quality(ctx, student, test, teacher_out, baselines), {"role": "student", **st.job})
    (out / ARTIFACTS_FILE).write_text(json.dumps(exported, indent=2))
    (out / "baselines.json").write_text(json.dumps([b.model_dump() for b in baselines], indent=2))
    write_quality_report(out, job)
    flagged = [n for n in exported if n != "teacher" and _read_quality(out / n).below_baseline]
    return {"artifacts": exported, "below_baseline": flagged,
            "baselines": {b.name: b.ssim_to_teacher for b in baselines}}


def run_baselines(ctx: Context, test: ImageSet, teacher_out: torch.Tensor, teacher_quality: dict) -> list:
    """Trivial baselines (identity, mean training image, teacher vs truth) on the held-out split."""
    from compression_jobs.baselines import trivial_baselines

    return trivial_baselines(test, ImageSet(ctx.job.data, "train"), teacher_out, ctx.job.eval_batch_size,
                             teacher_quality)


def _read_quality(folder: Path):  # noqa: ANN202 - registry.manifest.Quality
    from registry.artifact import read_artifact_dir

    return read_artifact_dir(folder, verify=False).quality


def write_quality_report(export_dir: Path, job: JobConfig) -> str:
    """export/report.md: every exported artifact with its fidelity next to the trivial baselines."""
    from compression_jobs.baselines import best_trivial
    from compression_jobs.report import fmt
    from registry.artifact import read_artifact_dir

    names = list(json.loads((export_dir / ARTIFACTS_FILE).read_text()))
    manifests = {n: read_artifact_dir(export_dir / n, verify=False) for n in names}
    teacher = manifests["teacher"]
    students = [n for n in names if n != "teacher"]
    baselines = manifests[students[0]].quality.baselines if students else []
    best = best_trivial(baselines)
    lines = [f"# Quality report: {job.name} ({job.method})", "",
             f"Held-out split `{job.data.test_split}` of {teacher.quality.dataset} "
             f"({teacher.quality.n_images} images at {teacher.quality.resolution} px). MACs per image at 256x256.",
             "A student is **flagged** when its SSIM to the teacher does not beat the best trivial baseline"
             + (f" (here `{best.name}`, SSIM {best.ssim_to_teacher:.3f})" if best else "") + "; flagged students are "
             "not published unless `--publish-all`.", "",
             "| model | MACs | ratio | PSNR→teacher | SSIM→teacher | FID→teacher | PSNR→truth | SSIM→truth | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    t_macs = teacher.architecture.macs
    tq = teacher.quality
    lines.append(f"| teacher `{teacher.artifact_id}` | {t_macs / 1e9:.2f} G | 1x | – | – | – | "
                 f"{fmt(tq.psnr_to_ground_truth, '.2f')} | {fmt(tq.ssim_to_ground_truth)} | reference |")
    for b in baselines:
        if b.name == "teacher":
            continue
        lines.append(f"| baseline: {b.name} | 0 | – | {fmt(b.psnr_to_teacher, '.2f')} | {fmt(b.ssim_to_teacher)} | – | "
                     f"{fmt(b.psnr_to_ground_truth, '.2f')} | {fmt(b.ssim_to_ground_truth)} | trivial |")
    for n in students:
        m = manifests[n]
        q = m.quality
        verdict = "**FLAGGED: no better than a trivial baseline**" if q.below_baseline else (
            "beats baselines" if q.below_baseline is False else "not judged")
        lines.append(f"| {m.method} `{n}` | {m.architecture.macs / 1e9:.3f} G | {t_macs / m.architecture.macs:.1f}x | "
                     f"{fmt(q.psnr_to_teacher, '.2f')} | {fmt(q.ssim_to_teacher)} | {fmt(q.fid_to_teacher, '.1f')} | "
                     f"{fmt(q.psnr_to_ground_truth, '.2f')} | {fmt(q.ssim_to_ground_truth)} | {verdict} |")
    text = "\n".join(lines) + "\n"
    (export_dir / "report.md").write_text(text)
    return text


def stage_publish(ctx: Context, out: Path) -> dict:
    job = ctx.job
    exp = ctx.require("export")
    if not job.publish.enabled:
        return {"published": [], "note": "publishing disabled in config"}
    names = [n for n in json.loads((exp / ARTIFACTS_FILE).read_text()) if n != "teacher"]
    held_back = [] if ctx.publish_all else [n for n in names if _read_quality(exp / n).below_baseline]
    folders = ([exp / "teacher"] if job.publish.publish_teacher else []) + [exp / n for n in names if n not in held_back]
    published = publish_folders(ctx, folders)
    (out / "published.json").write_text(json.dumps(published, indent=2))
    info: dict = {"published": published}
    if held_back:
        info["held_back"] = held_back
        info["note"] = ("not published: no better than a trivial baseline against the teacher "
                        "(see export/report.md; --publish-all publishes them anyway)")
    return info


def publish_folders(ctx: Context, folders: list[Path]) -> list[dict]:
    """Publish artifact folders (idempotent: same bytes, same id) with their profiles."""
    from registry.artifact import read_artifact_dir

    registry = ctx.registry
    if registry is None:
        from registry.client import Registry

        registry = Registry.from_env()
    published = []
    for folder in folders:
        manifest = read_artifact_dir(folder)
        res = registry.publish_dir(folder)
        if not res.created:  # already published: a new manifest carries its profiles; an old one gets them added
            for prof in manifest.profiles:
                registry.add_profile(manifest.artifact_id, prof, task=ctx.job.task)
        published.append({"folder": folder.name, "artifact_id": res.manifest.artifact_id,
                          "created": bool(res.created), "method": manifest.method})
    return published


StageFn = Callable[[Context, Path], dict]

STAGE_FUNCS: dict[str, StageFn] = {
    "train-teacher": stage_train_teacher,
    "export": stage_export,
    "publish": stage_publish,
}
"""Every known stage by name: the shared ones here, a method's added when it is first loaded
(:func:`get_method`); `run_stage` looks stages up here, so a test patches this dict."""


# ----------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Student:
    """One trained generator a method hands to the shared export stage."""

    name: str  # folder under export/ and name in published.json, e.g. the channel config string
    load: Callable[[], torch.nn.Module]  # builds the generator and loads its weights (eval mode)
    job: dict = field(default_factory=dict)  # extra manifest `job` fields, e.g. {"channel_config": ...}


@dataclass(frozen=True)
class Method:
    """A compression method: its own middle stages between the shared teacher and export/publish."""

    name: str  # the manifest `method` of its students, also the config's `method:` value
    stages: tuple[str, ...]
    stage_funcs: dict[str, StageFn]
    students: Callable[[Context], list[Student]]  # what export exports, read from the method's stage outputs
    summary: Callable[[Path], list[str]] | None = None  # extra lines for `compress status`


class MethodUnavailable(RuntimeError):
    """The config names a method whose code is not (yet) in this installation."""


METHOD_MODULES: dict[str, str] = {
    "gan-compression": "compression_jobs.gan_compression.stages",
    "omgd": "compression_jobs.omgd.stages",
    "coevolution": "compression_jobs.coevolution.stages",
}
"""Where each pluggable method's `METHOD` object lives (imported on first use)."""


def get_method(name: str) -> Method:
    """The method object for a config's `method:`; registers its stage functions in STAGE_FUNCS.

    Imported by name, not at module level: a method's stages import this module."""
    module_name = METHOD_MODULES.get(name)
    if module_name is None:
        raise ValueError(f"unknown method {name!r}; methods: {', '.join(METHOD_MODULES)}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise MethodUnavailable(f"method {name!r} is not available in this installation "
                                    f"({module_name} not found)") from exc
        raise
    method = getattr(module, "METHOD", None)
    if not isinstance(method, Method):
        raise MethodUnavailable(f"method {name!r}: {module_name} defines no METHOD")
    for stage, fn in method.stage_funcs.items():
        STAGE_FUNCS.setdefault(stage, fn)  # setdefault: a test's monkeypatch of STAGE_FUNCS stays in force
    return method


def stages_for(method: str) -> tuple[str, ...]:
    """The full stage list of a method: shared head, its own stages, shared tail."""
    return SHARED_HEAD + get_method(method).stages + SHARED_TAIL


# ----------------------------------------------------------------------------- driver


def run_stage(ctx: Context, stage: str) -> dict:
    """Run one stage into a temp folder; on success move it into place and record it in state.json."""
    stages = stages_for(ctx.job.method)
    if stage not in stages:
        raise ValueError(f"unknown stage {stage!r} for method {ctx.job.method!r}; stages: {', '.join(stages)}")
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    state = read_state(ctx.run_dir)
    digest = config_digest(ctx.job)
    if state.get("config_digest") not in (None, digest):
        raise RuntimeError(f"{ctx.run_dir} was made with a different config ({state['config_digest']} != {digest}); "
                           f"use a new run dir")
    (ctx.run_dir / "config.yaml").write_text(yaml.safe_dump(ctx.job.model_dump(mode="json"), sort_keys=False))
    threads_before, det_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if ctx.job.threads:
        torch.set_num_threads(ctx.job.threads)
    seed_everything(ctx.job.seed * 100 + stages.index(stage), ctx.job.deterministic)
    tmp = ctx.run_dir / f".{stage}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.time()
    try:
        info = STAGE_FUNCS[stage](ctx, tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (KeyboardInterrupt, StageFailed)):
            raise
        raise StageFailed(stage, exc) from exc
    finally:  # leave the process as we found it (tests and services share it)
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(det_before)
    final = ctx.stage_dir(stage)
    shutil.rmtree(final, ignore_errors=True)
    tmp.replace(final)
    # later stages depend on this one: they are no longer valid
    later = stages[stages.index(stage) + 1 :]
    state = read_state(ctx.run_dir)
    state["config_digest"] = digest
    state["method"] = ctx.job.method
    state.setdefault("completed", {})
    for s in later:
        state["completed"].pop(s, None)
    state["completed"][stage] = {"seconds": round(time.time() - started, 2), "info": info}
    _write_state(ctx.run_dir, state)
    return info


def adopt_stages(src_run: Path, ctx: Context, stages: Sequence[str]) -> None:
    """Reuse another run's completed stages (e.g. one teacher for every method of a comparison, one
    trained supernet searched under several budgets): copy their folders and record them as
    completed here, marked `shared_from`. Only into a fresh run dir."""
    done = read_state(src_run).get("completed", {})
    missing = [s for s in stages if s not in done]
    if missing:
        raise RuntimeError(f"{src_run} has not completed stage(s) {', '.join(map(repr, missing))}")
    if read_state(ctx.run_dir).get("completed"):
        raise RuntimeError(f"{ctx.run_dir} already has completed stages; adopt only into a fresh run dir")
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    completed = {}
    for stage in stages:
        shutil.rmtree(ctx.stage_dir(stage), ignore_errors=True)
        shutil.copytree(src_run / stage, ctx.stage_dir(stage))
        completed[stage] = {"seconds": 0.0, "info": {**done[stage].get("info", {}), "shared_from": str(src_run)}}
    if (src_run / CACHE_DIR).is_dir() and not (ctx.run_dir / CACHE_DIR).exists():
        shutil.copytree(src_run / CACHE_DIR, ctx.run_dir / CACHE_DIR, copy_function=_link_or_copy)
    (ctx.run_dir / "config.yaml").write_text(yaml.safe_dump(ctx.job.model_dump(mode="json"), sort_keys=False))
    _write_state(ctx.run_dir, {"config_digest": config_digest(ctx.job), "method": ctx.job.method,
                               "completed": completed})


def _link_or_copy(src: str, dst: str) -> None:
    """Caches are never written in place (replaced whole), so a hard link is a safe, free copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run_pipeline(ctx: Context, *, resume: bool = False, until: str | None = None,
                 stages: tuple[str, ...] | None = None, echo: Callable[[str], None] = lambda _m: None) -> dict:
    """Run the stages in order (skipping completed ones with `resume`), stopping after `until`.

    `stages` defaults to the full list of the config's method.
    """
    stages = stages_for(ctx.job.method) if stages is None else stages
    if until is not None and until not in stages:
        raise ValueError(f"--until {until!r} is not a stage of method {ctx.job.method!r}: {', '.join(stages)}")
    done = set(completed_stages(ctx.run_dir)) if resume else set()
    if not resume and completed_stages(ctx.run_dir):
        raise RuntimeError(f"{ctx.run_dir} already has completed stages {completed_stages(ctx.run_dir)}; "
                           f"pass --resume to continue or use a new run dir")
    results = {}
    for stage in stages:
        if stage in done:
            echo(f"[skip] {stage} (completed)")
        else:
            echo(f"[run ] {stage}")
            results[stage] = run_stage(ctx, stage)
        if stage == until:
            break
    return results
