"""`pocketgan profile-ops` — measure the student design space's block latencies on this device.

Run it on the device you want to compress for (a phone with ONNX Runtime, a GPU node, this CPU);
the table goes to the registry under ``optables/<TAG>.json`` and any compression job, on any
machine, can then search under a latency budget for that tag (``--set search.hardware_tag=TAG``).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from registry.errors import InvalidInput


def _multipliers(value: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise InvalidInput(f"--multipliers must be comma-separated numbers, got {value!r}") from None
    if not out or any(not 0 < m <= 1 for m in out):
        raise InvalidInput(f"--multipliers must be in (0, 1], got {value!r}")
    return out


@click.command("profile-ops")
@click.option("--hardware-tag", default=None, help="Tag the table is for (default: detected for this machine).")
@click.option("--ngf", type=int, default=64, show_default=True, help="Supernet base width (the job's student.ngf).")
@click.option("--n-blocks", type=int, default=9, show_default=True, help="Residual blocks (the job's student.n_blocks).")
@click.option("--multipliers", default="0.25,0.5,0.75,1.0", show_default=True,
              help="Width multipliers per slot (the job's student.channel_choices).")
@click.option("--max-config", default=None, help="Max widths instead of --ngf, e.g. 64_128_256_256_256_256_128_64.")
@click.option("--resolution", type=int, default=256, show_default=True,
              help="Square input side (the job's export.resolution, where latency budgets apply).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's choice).")
@click.option("--provider", default=None, help="Execution provider (default: CUDA if it really works, else CPU).")
@click.option("--runs", type=int, default=10, show_default=True, help="Timed rounds (p50 per block).")
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--calibrate", type=int, default=4, show_default=True,
              help="Whole networks measured to fit whole ≈ intercept + scale x sum of blocks (0: scale 1).")
@click.option("--fast-graph/--plain-graph", default=True, show_default=True,
              help="Measure blocks as exported with the fast-graph rewrites (export.fast_graph) or without.")
@click.option("--dry-run", is_flag=True, help="Measure and print, do not write to the registry.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table to this JSON file.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def profile_ops_cli(hardware_tag: str | None, ngf: int, n_blocks: int, multipliers: str, max_config: str | None,
                    resolution: int, threads: int | None, provider: str | None, runs: int, warmup: int, calibrate: int,
                    fast_graph: bool, dry_run: bool, out_file: Path | None, as_json: bool) -> None:
    """Measure every block shape of the student design space here; store the table in the registry."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from compression_jobs.hardware import resolve_hardware_tag
    from compression_jobs.latency_table import profile_ops
    from compression_jobs.models.mobile import ChannelConfig
    from compression_jobs.models.supernet import ChannelSpace
    from registry.runtime import default_providers

    if runs < 1 or warmup < 0 or calibrate < 0 or n_blocks < 1 or ngf < 8 or (threads is not None and threads < 1):
        raise InvalidInput("--runs, --n-blocks, --threads must be >= 1, --warmup, --calibrate >= 0, --ngf >= 8")
    if resolution <= 0 or resolution % 4 or resolution > 4096:
        raise InvalidInput(f"--resolution must be a multiple of 4 in [4, 4096], got {resolution}")
    prov = provider or default_providers()[0]
    tag = resolve_hardware_tag(hardware_tag, prov)
    try:
        mx = ChannelConfig.parse(max_config) if max_config else ChannelConfig.full(ngf)
        space = ChannelSpace.from_multipliers(mx, _multipliers(multipliers))
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    registry = None
    if not dry_run:
        from registry.client import Registry

        registry = Registry.from_env()  # fail on a missing registry before minutes of measuring
        registry.store.check_bucket()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=as_json, transient=True, console=Console(stderr=True)) as bar:
        def progress(desc: str, total: int):  # noqa: ANN202
            task = bar.add_task(desc, total=total)
            return lambda: bar.advance(task)

        try:
            table = profile_ops(space, hardware_tag=tag, n_blocks=n_blocks, resolution=resolution, threads=threads,
                                provider=prov, runs=runs, warmup=warmup, fast_export=fast_graph, calibrate=calibrate,
                                progress=progress)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    key = None
    if registry is not None:
        from registry.optables import put_optable

        key = put_optable(registry, table)
    if out_file is not None:
        out_file.write_text(table.model_dump_json(indent=1))
    if as_json:
        click.echo(json.dumps({"written": key, **table.model_dump(mode="json")}))
        return
    by_kind: dict[str, list[float]] = {}
    for k, ms in table.entries.items():
        by_kind.setdefault(k.split("/")[0], []).append(ms)
    click.echo(f"op table for {tag}: {len(table.entries)} blocks at {resolution}x{resolution}, "
               f"{prov}, threads {threads or 'default'}, whole ≈ {table.intercept_ms:.2f} ms + {table.scale:.3f} x sum")
    for kind, values in by_kind.items():
        click.echo(f"  {kind:6s} {len(values):3d} shapes  {min(values):8.3f} .. {max(values):8.3f} ms")
    for c in table.calibration:
        click.echo(f"  whole {c['config']}: measured {c['measured_ms']:.2f} ms, sum of blocks {c['sum_ms']:.2f} ms")
    click.echo(f"written to {registry.url(key)}" if key and registry else "not written (--dry-run)")
