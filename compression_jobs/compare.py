"""`pocketgan compress compare`: one teacher, data and MACs budget through every method, INT8 of each
method's winner, one markdown report and a Pareto plot.

Layout under ROOT: ``<method>/`` is an ordinary run dir per method (the first available method
trains the teacher, the others adopt that stage: trained once); ``int8/<method>/`` the quantized
winner; ``calibration/`` the INT8 calibration images (training inputs); ``report.md``,
``pareto.png``, ``compare.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch
from pydantic import BaseModel

from compression_jobs.data import ImageSet, to_image
from compression_jobs.gan_compression.config import JobConfig
from compression_jobs.pipeline import (
    ARTIFACTS_FILE,
    Context,
    MethodUnavailable,
    held_out,
    measure_quality,
    add_profile,
    adopt_stages,
    completed_stages,
    get_method,
    macs_budget,
    publish_folders,
    read_state,
    run_pipeline,
)
from compression_jobs.report import Series, fmt, manifest_row, scatter

METHODS: tuple[str, ...] = ("gan-compression", "omgd", "coevolution")
COLORS = {"gan-compression": (40, 90, 220), "omgd": (220, 120, 20), "coevolution": (30, 160, 60)}


class MethodResult(BaseModel):
    method: str
    available: bool
    note: str | None = None
    run_dir: str | None = None
    train_seconds: float | None = None  # the method's own stages (teacher, export, publish excluded)
    students: dict[str, str] = {}  # export folder → artifact id
    winner: str | None = None  # folder of the best student (SSIM to teacher)
    int8: str | None = None  # artifact id of the winner's INT8 version


class CompareResult(BaseModel):
    root: str
    teacher_id: str
    teacher_seconds: float
    budget_macs: int | None
    methods: list[MethodResult]
    published: list[dict]


def job_for(job: JobConfig, method: str) -> JobConfig:
    """The job with another method; a copy, so which teacher fields were set explicitly is kept
    (re-validating a dump would turn every default into an override of a given checkpoint)."""
    return job.model_copy(deep=True, update={"method": method})


def calibration_images(job: JobConfig, folder: Path, n: int = 32) -> Path:
    """The first `n` training inputs as PNGs (what INT8 calibration runs on; never the held-out split)."""
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    train = ImageSet(job.data, "train")
    for i in range(min(n, len(train))):
        to_image(train.source[i]).save(folder / f"{i}.png")
    return folder


def _winner(run_dir: Path) -> tuple[dict[str, str], str | None]:
    from registry.artifact import read_artifact_dir

    exported = json.loads((run_dir / "export" / ARTIFACTS_FILE).read_text())
    students = {k: v for k, v in exported.items() if k != "teacher"}
    ssim = {k: read_artifact_dir(run_dir / "export" / k).quality.ssim_to_teacher or 0.0 for k in students}
    return students, max(ssim, key=ssim.get) if ssim else None


def quantize_winner(ctx: Context, folder: Path, out: Path, calib: Path) -> str:
    """INT8 of an exported student, with PSNR/SSIM to the teacher measured on the INT8 model itself."""
    from compression_jobs.quantize import quantize_artifact
    from registry.artifact import read_artifact_dir, write_manifest
    from registry.runtime import OnnxGenerator

    job = ctx.job
    if (out / "manifest.json").is_file():
        return read_artifact_dir(out).artifact_id
    shutil.rmtree(out, ignore_errors=True)
    manifest = quantize_artifact(folder, calib, out, resolution=job.export.resolution,
                                 threads=job.export.profile_threads)
    session = OnnxGenerator(out / manifest.model_file, providers=["CPUExecutionProvider"],
                            intra_op_threads=job.export.profile_threads)

    def generate(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.from_numpy(session.run(xi[None].numpy().astype("float32"))) for xi in x])

    test, teacher_out, _ = held_out(ctx)
    q = measure_quality(ctx, generate, test, teacher_out, read_artifact_dir(folder, verify=False).quality.baselines)
    q = q.model_copy(update={"psnr_to_fp32": manifest.quality.psnr_to_fp32,
                             "notes": [*q.notes, "PSNR/SSIM measured on the INT8 model (ONNX Runtime, CPU)",
                                       *[n for n in manifest.quality.notes if n.startswith("psnr_to_fp32")]]})
    manifest = manifest.model_copy(update={"quality": q})
    write_manifest(out, manifest)
    if job.export.profile:
        manifest = add_profile(job, out, manifest)
    return manifest.artifact_id


def run_compare(job: JobConfig, root: Path, *, registry: object | None = None, inception_weights: Path | None = None,
                methods: tuple[str, ...] = METHODS, echo: Callable[[str], None] = lambda _m: None,
                publish_all: bool = False) -> CompareResult:
    """Every method on one teacher (trained once), then INT8 of each winner; resumable (re-run continues)."""
    root.mkdir(parents=True, exist_ok=True)
    results: list[MethodResult] = []
    teacher_run: Path | None = None
    contexts: dict[str, Context] = {}
    for name in methods:
        try:
            method = get_method(name)
        except MethodUnavailable as exc:
            echo(f"[compare] {name}: not available ({exc})")
            results.append(MethodResult(method=name, available=False, note=str(exc)))
            continue
        ctx = Context(job_for(job, name), root / name, inception_weights, registry, publish_all=publish_all)
        contexts[name] = ctx
        if teacher_run is not None and not completed_stages(ctx.run_dir):
            adopt_stages(teacher_run, ctx, ["train-teacher"])
        echo(f"[compare] {name}")
        run_pipeline(ctx, resume=True, echo=echo)
        teacher_run = teacher_run or ctx.run_dir
        done = read_state(ctx.run_dir)["completed"]
        students, winner = _winner(ctx.run_dir)
        results.append(MethodResult(method=name, available=True, run_dir=str(ctx.run_dir), students=students,
                                    winner=winner, train_seconds=round(sum(done[s]["seconds"] for s in method.stages), 1)))
    if teacher_run is None:
        raise MethodUnavailable("no compression method is available")
    calib = calibration_images(job, root / "calibration")
    published = []
    for r in results:
        if r.winner is None:
            continue
        ctx = contexts[r.method]
        echo(f"[compare] int8 of {r.method} {r.winner}")
        out = root / "int8" / r.method
        r.int8 = quantize_winner(ctx, Path(r.run_dir) / "export" / r.winner, out, calib)
        if job.publish.enabled and (publish_all or not _manifest(out).quality.below_baseline):
            published += publish_folders(ctx, [out])
    for r in results:
        if r.available:
            published += read_state(Path(r.run_dir))["completed"]["publish"]["info"].get("published", [])
    teacher = _manifest(teacher_run / "export" / "teacher")
    result = CompareResult(root=str(root), teacher_id=teacher.artifact_id,
                           teacher_seconds=read_state(teacher_run)["completed"]["train-teacher"]["seconds"],
                           budget_macs=macs_budget(job, teacher.architecture.macs), methods=results, published=published)
    (root / "compare.json").write_text(result.model_dump_json(indent=2))
    write_report(result, root)
    return result


def _manifest(folder: Path):  # noqa: ANN202 - registry.manifest.Manifest
    from registry.artifact import read_artifact_dir

    return read_artifact_dir(folder, verify=False)


def _rows(result: CompareResult) -> list[dict]:
    root = Path(result.root)
    first = next(r for r in result.methods if r.available)
    entries = [("teacher", "teacher", Path(first.run_dir) / "export" / "teacher", result.teacher_seconds)]
    for r in result.methods:
        if not r.available:
            continue
        entries += [(r.method, k, Path(r.run_dir) / "export" / k, r.train_seconds) for k in r.students]
        if r.int8:
            entries.append((f"{r.method} int8", r.winner, root / "int8" / r.method, None))
    return [{**manifest_row(m := _manifest(folder)), "method": method, "name": name, "seconds": secs,
             "below": bool(m.quality.below_baseline)}
            for method, name, folder, secs in entries]


def write_report(result: CompareResult, root: Path) -> str:
    """report.md (table + notes) and pareto.png (MACs vs SSIM to teacher, one colour per method)."""
    rows = _rows(result)
    t = rows[0]
    lines = [
        f"# Compression methods compared: {root}", "",
        f"- one teacher (`{result.teacher_id}`, trained once in {result.teacher_seconds:.0f} s), the same data and "
        f"MACs budget ({fmt(result.budget_macs and result.budget_macs / 1e9)} GMACs @256) for every method",
        "- latency: p50 of the ONNX model measured on this machine (ONNX Runtime CPU) at the export resolution",
        "- training time: the method's own stages (teacher, export and publish excluded)", "",
        "| method | artifact | id | precision | GMACs @256 | MACs reduction | params | ONNX size | p50 ms (res, tag) "
        "| speed-up | PSNR→teacher | SSIM→teacher | PSNR→GT | SSIM→GT | FID | KID | PSNR→fp32 | training s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        red = t["macs"] / r["macs"] if r["macs"] else None
        speed = t["p50"] / r["p50"] if (t["p50"] and r["p50"]) else None
        lines.append(
            f"| {r['method']} | {r['name']} | `{r['id']}` | {r['precision']} | {fmt(r['macs'] / 1e9)} | {fmt(red, '.1f')}x "
            f"| {r['params']:,} | {r['bytes'] / 1e6:.2f} MB | {fmt(r['p50'], '.2f')} ({r['res']}, {r['tag']}) "
            f"| {fmt(speed, '.1f')}x | {fmt(r['psnr_t'], '.2f')} | {fmt(r['ssim_t'])} | {fmt(r['psnr_gt'], '.2f')} "
            f"| {fmt(r['ssim_gt'])} | {fmt(r['fid'], '.1f')} | {fmt(r['kid'], '.4f')} | {fmt(r['psnr_fp32'], '.2f')} "
            f"| {fmt(r['seconds'], '.0f')} |")
    baselines = next((_manifest(Path(r.run_dir) / "export" / k).quality.baselines for r in result.methods
                      if r.available for k in r.students), [])
    for b in baselines:
        if b.name != "teacher":
            lines.append(f"| baseline: {b.name} | (trivial) | – | – | 0 | – | – | – | – | – | {fmt(b.psnr_to_teacher, '.2f')} "
                         f"| {fmt(b.ssim_to_teacher)} | {fmt(b.psnr_to_ground_truth, '.2f')} | {fmt(b.ssim_to_ground_truth)} "
                         f"| – | – | – | – |")
    flagged = [f"{r['method']} {r['name']}" for r in rows if r.get("below")]
    lines.append("")
    if flagged:
        lines.append(f"- **FLAGGED (SSIM to teacher not above the best trivial baseline; not published unless "
                     f"--publish-all):** {', '.join(flagged)}")
    for r in result.methods:
        if not r.available:
            lines.append(f"- **{r.method}: not available** — {r.note}")
    lines += ["- INT8 rows: MACs/params are the fp32 graph's (weights stored as int8); PSNR/SSIM measured on the "
              "INT8 model", "", "![pareto](pareto.png)", ""]
    text = "\n".join(lines)
    (root / "report.md").write_text(text)
    series = []
    for r in result.methods:
        if r.available:
            c = COLORS.get(r.method, (120, 120, 120))
            series.append(Series(r.method, c, [(x["macs"], x["ssim_t"], x["name"], x["p50"]) for x in rows
                                               if x["method"] == r.method], radius=5, labels=True))
            series.append(Series(f"{r.method} int8", c, [(x["macs"], x["ssim_t"], "int8", x["p50"]) for x in rows
                                                         if x["method"] == f"{r.method} int8"], radius=8, ring=True))
    scatter(series, root / "pareto.png", title="SSIM to the shared teacher on held-out images, per method "
            "(rings: INT8 of the winner)", teacher_macs=t["macs"], budget_macs=result.budget_macs,
            teacher_latency_ms=t["p50"])
    return text
