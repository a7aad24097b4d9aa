"""`pocketgan macs | export | quantize | profile` — the model-layer commands.

Heavy imports (torch, the registry client) happen inside each command so that
`pocketgan --help` and `pocketgan profile` stay quick and `profile` never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from registry.cli import json_report, parse_resolution
from registry.errors import IntegrityError, InvalidInput

ARCHES = ("resnet", "unet", "mobile-resnet", "supernet")
NORM_CHOICES = ("instance", "instance-affine", "batch", "none")


def _build(arch: str, ngf: int, n_blocks: int, num_downs: int, norm: str | None, config: str | None):  # noqa: ANN202
    from compression_jobs.models import ChannelConfig, mobile_resnet_generator, resnet_generator, supernet, unet_generator

    try:
        if arch == "resnet":
            return resnet_generator(ngf=ngf, n_blocks=n_blocks, norm=norm or "instance"), {}
        if arch == "unet":
            return unet_generator(num_downs=num_downs, ngf=ngf, norm=norm or "batch"), {}
        if arch == "mobile-resnet":
            if not config:
                raise InvalidInput("--arch mobile-resnet needs --config (8 widths, e.g. 16_16_32_16_32_32_16_16)")
            return mobile_resnet_generator(config, n_blocks=n_blocks), {}
        net = supernet(ngf=ngf, n_blocks=n_blocks)
        return net, ({"config": ChannelConfig.parse(config)} if config else {})
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


def _from_checkpoint(path: Path, arch: str | None, ngf: int | None, n_blocks: int | None, num_downs: int | None,
                     norm: str | None):  # noqa: ANN202
    """A teacher generator from a checkpoint via the one loader (given options override what it implies)."""
    from compression_jobs.checkpoints import CheckpointError, detect_arch, read_state_dict, resolve_generator

    try:
        arch = arch or detect_arch(read_state_dict(path))
        if arch not in ("resnet", "unet"):
            raise InvalidInput("--checkpoint reads teacher generators: --arch resnet or unet")
        return resolve_generator(path, arch=arch, ngf=ngf, n_blocks=n_blocks, num_downs=num_downs, norm=norm)
    except CheckpointError as exc:
        raise InvalidInput(str(exc)) from exc


@click.command("macs")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Count a generator checkpoint (architecture inferred; --arch/--ngf/--n-blocks/--norm override).")
@click.option("--arch", type=click.Choice(ARCHES), default=None, help="Architecture [default: resnet; inferred with --checkpoint].")
@click.option("--ngf", type=int, default=None, help="Base width (resnet, unet, supernet max) [default: 64].")
@click.option("--n-blocks", type=int, default=None, help="Residual blocks (resnet, mobile-resnet, supernet) [default: 9].")
@click.option("--num-downs", type=int, default=None, help="U-Net downsamplings (8 = unet_256) [default: 8].")
@click.option("--norm", type=click.Choice(NORM_CHOICES), default=None, help="Norm (does not change MACs; changes params).")
@click.option("--config", "config", default=None, help="Channel config for mobile-resnet / a supernet sub-network.")
@click.option("--size", type=int, default=256, show_default=True, help="Input height (and width unless --width).")
@click.option("--width", type=int, default=None, help="Input width (default: --size).")
@click.option("--exact-transposed", is_flag=True, help="Count transposed convs by input elements (not the published convention).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def macs_cli(checkpoint: Path | None, arch: str | None, ngf: int | None, n_blocks: int | None, num_downs: int | None,
             norm: str | None, config: str | None, size: int, width: int | None, exact_transposed: bool,
             as_json: bool) -> None:
    """Count MACs and parameters of a generator at a given input size (convention in --help of counting)."""
    from compression_jobs.counting import CONVENTION, count_active_params, count_macs, count_params

    spec = None
    if checkpoint is not None:
        model, spec = _from_checkpoint(checkpoint, arch, ngf, n_blocks, num_downs, norm)
        arch, fwd = spec["arch"], {}
    else:
        arch = arch or "resnet"
        model, fwd = _build(arch, ngf or 64, n_blocks or 9, num_downs or 8, norm, config)
    width = width or size
    multiple = getattr(model, "size_multiple", 4)
    if size % multiple or width % multiple:
        raise InvalidInput(f"{arch}: height and width must be multiples of {multiple}, got {size}x{width}")
    macs = count_macs(model, size, width, forward_kwargs=fwd, transposed="exact" if exact_transposed else "published")
    params = count_active_params(model, 64, fwd) if fwd else count_params(model)
    result = {"arch": arch, "height": size, "width": width, "macs": macs, "gmacs": round(macs / 1e9, 4), "params": params,
              "mparams": round(params / 1e6, 4), "config": config,
              "convention": "exact transposed" if exact_transposed else CONVENTION}
    if spec is not None:
        result["checkpoint"] = str(checkpoint)
        result["architecture"] = spec
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"{arch} {size}x{width}: {macs / 1e9:.3f} GMACs, {params / 1e6:.3f} M params"
                   + (f" (config {config})" if config else "")
                   + (" (" + " ".join(f"{k}={v}" for k, v in spec.items() if k != "arch") + ")" if spec else ""))


@click.command("export")
@json_report
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Teacher state dict (latest_net_G.pth).")
@click.option("--arch", type=click.Choice(("resnet", "unet")), default="resnet", show_default=True, help="Teacher architecture.")
@click.option("--ngf", type=int, default=None, help="Base width (default: inferred from the checkpoint).")
@click.option("--n-blocks", type=int, default=None, help="Residual blocks (default: inferred; students: 9).")
@click.option("--num-downs", type=int, default=None, help="U-Net downsamplings (default: inferred).")
@click.option("--norm", type=click.Choice(NORM_CHOICES), default=None, help="Norm (default: inferred).")
@click.option("--student-config", default=None, help="Export a mobile-resnet student with this channel config.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Student state dict.")
@click.option("--task", required=True, help="Registry task name, e.g. facades-label2photo.")
@click.option("--method", default=None, help="Manifest method (default: teacher for --teacher; required for students).")
@click.option("--parent", default=None, help="Parent artifact id or name.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Artifact directory to write.")
@click.option("--resolution", type=int, default=None, help="Parity-check resolution (default 64; 2**num_downs for U-Nets).")
@click.option("--exporter", type=click.Choice(("auto", "dynamo", "torchscript")), default="auto", show_default=True)
def export_cli(teacher: Path | None, arch: str, ngf: int | None, n_blocks: int | None, num_downs: int | None, norm: str | None,
               student_config: str | None, weights: Path | None, task: str, method: str | None, parent: str | None,
               out_dir: Path, resolution: int | None, exporter: str) -> None:
    """Export a teacher checkpoint or a student (config + weights) to model.onnx + manifest.json."""
    from compression_jobs.checkpoints import CheckpointError, load_generator_state_dict
    from compression_jobs.export import ExportParityError, export_artifact
    from registry.names import validate_name

    validate_name(task, "task")
    if bool(teacher) == bool(student_config):
        raise InvalidInput("give exactly one of --teacher PATH or --student-config CFG (with --weights)")
    if (out_dir / "manifest.json").exists() or (out_dir / "model.onnx").exists():
        raise InvalidInput(f"{out_dir} already holds an artifact; choose a new --out")
    try:
        if teacher:
            model = load_generator_state_dict(teacher, arch=arch, ngf=ngf, n_blocks=n_blocks, num_downs=num_downs, norm=norm)
            method = method or "teacher"
            job = {"source": "teacher-checkpoint", "checkpoint": teacher.name}
        else:
            if not weights:
                raise InvalidInput("--student-config needs --weights (the student's state dict)")
            if not method:
                raise InvalidInput("--method is required for students (e.g. gan-compression, omgd)")
            model = load_generator_state_dict(weights, arch="mobile-resnet", config=student_config, n_blocks=n_blocks or 9,
                                              norm=norm)
            job = {"source": "student-checkpoint", "checkpoint": weights.name}
    except (CheckpointError, ValueError) as exc:
        raise InvalidInput(str(exc)) from exc
    try:
        manifest = export_artifact(model, out_dir, task=task, method=method, parent=parent, job=job,
                                   resolution=resolution, exporter=exporter)  # type: ignore[arg-type]
    except ExportParityError as exc:  # the ONNX graph computes something else than the checkpoint: exit 5
        raise IntegrityError(str(exc)) from exc
    a = manifest.architecture
    info = manifest.job["export"]
    click.echo(f"exported {manifest.artifact_id} ({a.family}, {a.macs / 1e9:.2f} GMACs @256, {a.params / 1e6:.2f} M params) "
               f"to {out_dir} via {info['exporter']} exporter, parity max abs diff "
               f"{max(info['parity_max_abs_diff'].values()):.1e}")
    return {"out": str(out_dir), "artifact_id": manifest.artifact_id, "exporter": info["exporter"],
            "parity_max_abs_diff": info["parity_max_abs_diff"], "manifest": manifest}


@click.command("quantize")
@json_report
@click.argument("artifact_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--calibration-images", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="New artifact directory.")
@click.option("--resolution", type=int, default=256, show_default=True)
@click.option("--n-calibration", type=int, default=32, show_default=True)
@click.option("--n-holdout", type=int, default=8, show_default=True, help="Held-out images for PSNR to fp32.")
@click.option("--half", type=click.Choice(("none", "left", "right")), default="none", show_default=True,
              help="Use one half of paired A|B images (facades: right = label map, the label2photo input).")
@click.option("--per-channel/--per-tensor", default=True, show_default=True)
@click.option("--calibration-method", type=click.Choice(("percentile", "minmax", "entropy")), default="percentile",
              show_default=True)
@click.option("--threads", type=int, default=None)
def quantize_cli(artifact_dir: Path, calibration_images: Path, out_dir: Path, resolution: int, n_calibration: int,
                 n_holdout: int, half: str, per_channel: bool, calibration_method: str, threads: int | None) -> None:
    """INT8 (QDQ) quantization with calibration on real images, as a new artifact (fp32 untouched)."""
    from compression_jobs.quantize import quantize_artifact

    m = quantize_artifact(artifact_dir, calibration_images, out_dir, resolution=resolution, n_calibration=n_calibration,
                          n_holdout=n_holdout, half=half, per_channel=per_channel,
                          calibration_method=calibration_method, threads=threads)  # type: ignore[arg-type]
    click.echo(f"int8 artifact {m.artifact_id} (parent {m.parent}) in {out_dir}: PSNR to fp32 {m.quality.psnr_to_fp32:.2f} dB, "
               f"{m.architecture.file_bytes / 1e6:.2f} MB")
    return {"out": str(out_dir), "artifact_id": m.artifact_id, "parent": m.parent, "psnr_to_fp32": m.quality.psnr_to_fp32,
            "manifest": m}


@click.command("profile")
@click.argument("artifact_id", required=False)
@click.option("--task", default=None, help="Task of ARTIFACT_ID, or: profile all artifacts of this task.")
@click.option("--promoted", is_flag=True, help="With --task and no ID: only the promoted (production) set.")
@click.option("--channel", default="production", show_default=True, help="Alias channel for --promoted.")
@click.option("--hardware-tag", default=None, help="Override the detected tag (e.g. a phone farm's arm64-android).")
@click.option("--resolution", "resolutions", multiple=True, default=("256",), show_default=True, help="N or HxW; repeatable.")
@click.option("--batch", "batches", multiple=True, type=int, default=(1,), show_default=True, help="Repeatable.")
@click.option("--runs", type=int, default=20, show_default=True, help="Timed runs per point (at least).")
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--min-time", type=float, default=0.0, show_default=True, help="Keep running until this many seconds per point.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's choice).")
@click.option("--provider", default=None, help="Execution provider (default: CUDA if it really works, else CPU).")
@click.option("--dry-run", is_flag=True, help="Measure and print, do not write to the registry.")
@click.option("--json", "as_json", is_flag=True)
def profile_cli(artifact_id: str | None, task: str | None, promoted: bool, channel: str, hardware_tag: str | None,
                resolutions: tuple[str, ...], batches: tuple[int, ...], runs: int, warmup: int, min_time: float,
                threads: int | None, provider: str | None, dry_run: bool, as_json: bool) -> None:
    """Measure latency on this machine and record the profile in the registry (add-profile)."""
    from rich.console import Console
    from rich.table import Table

    from compression_jobs.hardware import resolve_hardware_tag
    from compression_jobs.profiling import profile_model
    from registry.client import Registry

    if not artifact_id and not task:
        raise InvalidInput("give an ARTIFACT_ID, or --task T to profile that task's artifacts")
    if runs < 1 or warmup < 0:
        raise InvalidInput("--runs must be >= 1 and --warmup >= 0")
    if hardware_tag:
        resolve_hardware_tag(hardware_tag)  # validate before any work
    res = [parse_resolution(r) for r in resolutions]
    registry = Registry.from_env()
    if artifact_id:
        targets = [(artifact_id, task)]
    else:
        manifests = _task_manifests(registry, task, promoted, channel)  # type: ignore[arg-type]
        if not manifests:
            raise InvalidInput(f"no {'promoted ' if promoted else ''}artifacts for task {task}")
        targets = [(m.artifact_id, m.task) for m in manifests]
    results = []
    for aid, t in targets:
        local = registry.pull(aid, task=t)  # verified against the manifest's sha256
        model_path = local / registry.get_manifest(aid, task=t).model_file
        profile = profile_model(model_path, resolutions=res, batches=batches, warmup=warmup, runs=runs,
                                min_time_s=min_time, threads=threads, provider=provider, hardware_tag=hardware_tag,
                                progress=not as_json, label=aid)
        results.append((aid, t, profile))
    if not dry_run:  # only once every target was measured on the provider asked for: all or nothing
        for aid, t, profile in results:
            registry.add_profile(aid, profile, task=t)
    if as_json:
        click.echo(json.dumps([{"artifact_id": aid, "written": not dry_run, **p.model_dump(mode="json")} for aid, _, p in results]))
        return
    table = Table(title=f"latency on {results[0][2].hardware_tag} ({results[0][2].execution_provider}, threads {threads or 'default'})")
    for col in ("artifact", "HxW", "batch", "runs", "p50 ms", "p95 ms", "p99 ms", "img/s", "peak MB", "B/px"):
        table.add_column(col, justify="right" if col != "artifact" else "left")
    for aid, _, p in results:
        for m in p.measurements:
            table.add_row(aid, f"{m.height}x{m.width}", str(m.batch), str(m.runs), f"{m.p50_ms:.2f}", f"{m.p95_ms:.2f}",
                          f"{m.p99_ms:.2f}", f"{m.throughput_ips:.1f}", f"{m.peak_memory_mb or 0:.1f}",
                          f"{m.peak_bytes_per_pixel:.0f}" if m.peak_bytes_per_pixel is not None else "-")
    Console().print(table)
    if not dry_run:
        click.echo(f"wrote {len(results)} profile(s) for hardware tag {results[0][2].hardware_tag}")


def _task_manifests(registry, task: str, promoted: bool, channel: str) -> list:  # noqa: ANN001
    """All artifacts of `task`, or (promoted) those in the task's alias set."""
    manifests = list(registry.list(task=task))
    if not promoted:
        return manifests
    ids = set(registry.read_alias(task, channel).alias.artifacts)
    return [m for m in manifests if m.artifact_id in ids]
