"""`pocketgan registry …`: the operator's view of the registry.

Human tables by default, `--json` on every command for scripts. Configuration comes from the
environment (POCKETGAN_REGISTRY, POCKETGAN_S3_ENDPOINT, AWS_*); see `registry.config`.

Exit codes (raised as RegistryError subclasses and turned into one line by `pocketgan.cli.main`):
0 ok, 2 bad usage / invalid name or manifest, 3 conflict (lost race,
expected revision mismatch, retired or still-promoted artifact), 4 not found (artifact, alias,
bucket), 5 integrity failure (sha256/size mismatch, a stored manifest/profile/alias/event that no
longer parses: `ls` and `history` still list everything else and mark it corrupt), 6 registry
unreachable (down, timeout, 5xx), 7 not a servable generator (the contract of `registry.contract`,
checked at publish and promote), 8 configuration (POCKETGAN_REGISTRY unset or malformed, AWS
credentials missing or rejected). The same table holds for every `pocketgan` command (README).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click
from pydantic import BaseModel, Field

from registry.errors import InvalidInput

_json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
json_option = _json_option


def json_report(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command `--json`, the CLI-wide convention (README "Command line conventions").

    The command keeps printing its human report and returns the same facts as a JSON-able object
    (pydantic models, dicts, lists). Without --json the return value is ignored; with it the human
    text goes to stderr and the object is printed as JSON on stdout, so stdout is exactly one JSON
    document. Errors are unchanged: `error: …` on stderr, nothing on stdout, the table's exit code.
    Apply it directly under `@click.command`/`@group.command`.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, as_json: bool = False, **kwargs: Any) -> None:
        if not as_json:
            command(*args, **kwargs)
            return
        with contextlib.redirect_stdout(sys.stderr):
            result = command(*args, **kwargs)
        emit_json(result)

    return _json_option(wrapper)


def emit_json(obj: Any) -> None:
    """One JSON document on stdout (pydantic models, paths and datetimes at any depth)."""
    from pydantic_core import to_jsonable_python

    click.echo(json.dumps(obj, indent=2, default=to_jsonable_python))
_task_option = click.option("--task", default=None, help="Task the artifact belongs to (default: search all tasks).")


def parse_resolution(value: str, option: str = "--resolution") -> tuple[int, int]:
    """`N` or `HxW` (positive integers) as (height, width); shared by `registry compare` and `profile`."""
    h, sep, w = value.lower().partition("x")
    try:
        height, width = int(h), int(w if sep else h)
    except ValueError:
        raise InvalidInput(f"invalid {option} {value!r}: use N or HxW") from None
    if height < 1 or width < 1:
        raise InvalidInput(f"invalid {option} {value!r}: use N or HxW with positive sizes")
    return height, width


def _registry():  # noqa: ANN202 - lazy import keeps `--help` fast
    from registry.client import Registry

    return Registry.from_env()


def _console():  # noqa: ANN202
    import sys

    from rich.console import Console

    # piped output: wide enough that ids and hashes are not truncated
    return Console(width=None if sys.stdout.isatty() else 220)


_emit_json = emit_json


def _fmt_macs(macs: int | None) -> str:
    return "-" if macs is None else f"{macs / 1e9:.2f}G"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _fmt_params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


@click.group("registry")
def registry_cli() -> None:
    """Publish, inspect, verify, pull, promote and roll back artifacts in the S3 registry.

    Needs POCKETGAN_REGISTRY=s3://bucket/prefix (and POCKETGAN_S3_ENDPOINT for non-AWS S3);
    `pocketgan s3 up` starts a local one and prints the variables.
    """


@registry_cli.command("publish")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--task", default=None, help="Task (required for a bare .onnx file).")
@click.option("--method", default=None, help="Method, e.g. teacher, omgd, int8 (required for a bare .onnx file).")
@click.option("--parent", default=None, help="Parent artifact id or name (bare .onnx only).")
@click.option("--input-nc", type=click.IntRange(1, 64), default=3, show_default=True, help="Declared input channels (bare .onnx only).")
@click.option("--output-nc", type=click.IntRange(1, 64), default=3, show_default=True, help="Declared output channels (bare .onnx only).")
@click.option("--with-ort", is_flag=True, help="Also publish an ORT-format variant (model.ort, ONNX Runtime Mobile).")
@click.option("--with-fp16", is_flag=True, help="Also publish an fp16 variant (model.fp16.onnx) if it measures faster here.")
@_json_option
def publish_cmd(path: Path, task: str | None, method: str | None, parent: str | None, input_nc: int, output_nc: int,
                with_ort: bool, with_fp16: bool, as_json: bool) -> None:
    """Publish an artifact directory (with manifest.json) or a bare model.onnx (with --task/--method).

    The generator contract runs first (ONNX Runtime opens it, one NCHW float input/output with the
    declared channels and dynamic H x W, a finite in-range forward pass, MACs > 0): exit 7 with the
    reason when it fails; nothing is uploaded then. --with-ort / --with-fp16 add mobile variants (each
    with its own sha256 in the manifest, checked against model.onnx; the input directory is not changed)."""
    variants = [f for f, on in (("ort", with_ort), ("onnx-fp16", with_fp16)) if on]
    reg = _registry()
    if path.is_dir() and (path / "manifest.json").is_file():
        if task or method or parent:
            raise click.UsageError("--task/--method/--parent are for a bare .onnx file; an artifact dir has its own manifest")
        result = reg.publish_dir(path, variants=variants)
    else:
        onnx_path = path / "model.onnx" if path.is_dir() else path
        if not onnx_path.is_file() or onnx_path.suffix != ".onnx":
            raise click.UsageError(f"{path} is neither an artifact directory (manifest.json) nor an .onnx file")
        if not task or not method:
            raise click.UsageError("publishing a bare .onnx file needs --task and --method")
        result = reg.publish_model(onnx_path, task=task, method=method, parent=parent, input_nc=input_nc, output_nc=output_nc,
                                   variants=variants)
    m = result.manifest
    if as_json:
        out: dict = {"artifact_id": m.artifact_id, "task": m.task, "method": m.method, "created": result.created}
        if m.variants or result.notes:  # with variants: every file (own sha256) and what was done per format
            out.update(files=[f.model_dump() for f in m.files], variants=[v.model_dump() for v in m.variants],
                       notes=result.notes)
        _emit_json(out)
        return
    for note in result.notes:
        click.echo(f"variant {note}", err=True)
    verb = "published" if result.created else "already published (no change)"
    click.echo(
        f"{verb}: {m.artifact_id}  task={m.task} method={m.method} "
        f"macs={_fmt_macs(m.architecture.macs)} size={_fmt_bytes(m.total_bytes)}  {reg.url(reg._manifest_key(m.task, m.artifact_id))}"
    )


@registry_cli.command("ls")
@click.option("--task", default=None, help="Only this task.")
@click.option("--method", default=None, help="Only this method.")
@click.option("--hardware-tag", default=None, help="Only artifacts with a profile for this hardware tag.")
@click.option("--all", "include_retired", is_flag=True, help="Include retired artifacts.")
@_json_option
def ls_cmd(task: str | None, method: str | None, hardware_tag: str | None, include_retired: bool, as_json: bool) -> None:
    """List published artifacts (a JSON list of manifests with --json).

    An artifact whose stored manifest or profile does not parse is listed as corrupt (whatever the
    filters; `{"artifact_id", "task", "corrupt"}` in JSON), the rest as usual, then exit 5."""
    items = _registry().list_status(task=task, method=method, hardware_tag=hardware_tag, include_retired=include_retired)
    corrupt = [i for i in items if i.manifest is None]
    if as_json:
        _emit_json([i.manifest if i.manifest is not None else {"artifact_id": i.artifact_id, "task": i.task, "corrupt": i.corrupt}
                    for i in items])
        _exit_if_corrupt([f"{i.task}/{i.artifact_id}: {i.corrupt}" for i in corrupt])
        return
    from rich.table import Table

    table = Table(title=f"{len(items)} artifact(s)")
    for col in ("id", "task", "method", "family", "MACs", "params", "size", "profiles", "created"):
        table.add_column(col)
    if include_retired:
        table.add_column("retired")
    for item in items:
        m = item.manifest
        if m is None:
            row = [item.artifact_id, item.task, "[red]CORRUPT[/red]", "-", "-", "-", "-", "-", "-"]
            if include_retired:
                row.append("yes" if item.retired else "")
            table.add_row(*row)
            continue
        row = [
            m.artifact_id,
            m.task,
            m.method,
            m.architecture.family,
            _fmt_macs(m.architecture.macs),
            _fmt_params(m.architecture.params),
            _fmt_bytes(m.total_bytes),
            ",".join(p.hardware_tag for p in m.profiles) or "-",
            m.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        if include_retired:
            row.append("yes" if item.retired else "")
        table.add_row(*row)
    _console().print(table)
    _exit_if_corrupt([f"{i.task}/{i.artifact_id}: {i.corrupt}" for i in corrupt])


def _exit_if_corrupt(lines: list[str]) -> None:
    """After listing everything else: name each corrupt object on stderr and exit 5 (integrity)."""
    if not lines:
        return
    for line in lines:
        click.echo(f"error: corrupt: {line}", err=True)
    sys.exit(5)


@registry_cli.command("show")
@click.argument("artifact_id")
@_task_option
@_json_option
def show_cmd(artifact_id: str, task: str | None, as_json: bool) -> None:
    """Show one artifact's manifest (profiles merged in)."""
    m = _registry().get_manifest(artifact_id, task)
    if as_json:
        _emit_json(m)
        return
    from rich.table import Table

    c = _console()
    a = m.architecture
    c.print(f"[bold]{m.artifact_id}[/bold]  task={m.task}  method={m.method}  parent={m.parent or '-'}  created={m.created_at.isoformat()}")
    c.print(
        f"architecture: {a.family} channels={a.channel_config or '-'} in/out={a.input_nc}/{a.output_nc} "
        f"MACs@{a.reference_resolution}={_fmt_macs(a.macs)} params={_fmt_params(a.params)} opset={a.onnx_opset} {a.precision}"
    )
    ct = m.contract
    c.print(
        f"contract: passed with onnxruntime {ct.runtime_version} at {ct.checked_at:%Y-%m-%d %H:%M}: min side {ct.min_side}, "
        f"sides multiple of {ct.size_multiple}, graph MACs@{a.reference_resolution}={_fmt_macs(ct.graph_macs)}"
        if ct is not None and ct.passed else "contract: not recorded (published before the check; promote runs it)"
    )
    q = m.quality
    metrics = {"PSNR/teacher": q.psnr_to_teacher, "SSIM/teacher": q.ssim_to_teacher, "PSNR/truth": q.psnr_to_ground_truth,
               "SSIM/truth": q.ssim_to_ground_truth, "PSNR/fp32": q.psnr_to_fp32, "FID": q.fid, "KID": q.kid, "LPIPS": q.lpips,
               "FID/teacher": q.fid_to_teacher}
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if v is not None)
    c.print(
        f"quality: dataset={q.dataset or '-'} split={q.split or '-'} n={q.n_images or '-'} {shown or '(not measured)'}"
        + (f"\nnotes: {'; '.join(q.notes)}" if q.notes else "")
    )
    for b in q.baselines:
        figs = {"PSNR/teacher": b.psnr_to_teacher, "SSIM/teacher": b.ssim_to_teacher, "PSNR/truth": b.psnr_to_ground_truth,
                "SSIM/truth": b.ssim_to_ground_truth}
        c.print(f"baseline {b.name}: " + " ".join(f"{k}={v:.4g}" for k, v in figs.items() if v is not None), markup=False)
    if q.below_baseline is not None:
        c.print("verdict: [bold red]FLAGGED: no better than a trivial baseline against the teacher[/bold red]"
                if q.below_baseline else "verdict: beats the trivial baselines against the teacher")
    files = Table(title="files")
    for col in ("path", "bytes", "sha256"):
        files.add_column(col)
    for f in m.files:
        files.add_row(f.path, str(f.bytes), f.sha256)
    c.print(files)
    if m.profiles:
        prof = Table(title="profiles")
        for col in ("hardware tag", "provider", "threads", "size", "p50 ms", "p95 ms", "p99 ms", "img/s"):
            prof.add_column(col)
        for p in m.profiles:
            for x in p.measurements:
                prof.add_row(
                    p.hardware_tag, p.execution_provider, str(p.threads), f"{x.width}x{x.height}x{x.batch}",
                    f"{x.p50_ms:.2f}", f"{x.p95_ms:.2f}", f"{x.p99_ms:.2f}", f"{x.throughput_ips:.1f}",
                )
        c.print(prof)


class ComparedArtifact(BaseModel):
    """One row of `registry compare`: what an operator weighs before promoting."""

    artifact_id: str
    task: str
    method: str
    precision: str
    macs: int | None
    params: int | None
    total_bytes: int
    psnr_to_teacher: float | None
    ssim_to_teacher: float | None
    hardware_tag: str | None
    size: str | None = Field(default=None, description="HxW of the measurement used")
    p50_ms: float | None
    p95_ms: float | None
    promoted_in: list[str] = Field(default_factory=list, description="channels whose set holds it")


def compare_rows(reg, artifact_ids: list[str], task: str | None, hardware_tag: str | None,  # noqa: ANN001
                 height: int, width: int) -> list[ComparedArtifact]:
    """Side-by-side facts for several artifacts; latency from the profile for `hardware_tag`
    (default: the tag the first artifact was profiled on) at the measured size nearest HxW."""
    manifests = [reg.get_manifest(a, task) for a in artifact_ids]
    tag = hardware_tag or next((p.hardware_tag for m in manifests for p in m.profiles), None)
    channels: dict[str, list[str]] = {}
    for t in {m.task for m in manifests}:
        for ch in reg.channels(t):
            for aid in reg.read_alias(t, ch).alias.artifacts:
                channels.setdefault(aid, []).append(ch)
    rows = []
    for m in manifests:
        prof = next((p for p in m.profiles if p.hardware_tag == tag), None)
        meas = prof.nearest(height, width) if prof else None
        rows.append(ComparedArtifact(
            artifact_id=m.artifact_id, task=m.task, method=m.method, precision=m.architecture.precision,
            macs=m.architecture.macs, params=m.architecture.params, total_bytes=m.total_bytes,
            psnr_to_teacher=m.quality.psnr_to_teacher, ssim_to_teacher=m.quality.ssim_to_teacher,
            hardware_tag=tag if prof else None, size=f"{meas.height}x{meas.width}" if meas else None,
            p50_ms=meas.p50_ms if meas else None, p95_ms=meas.p95_ms if meas else None,
            promoted_in=sorted(channels.get(m.artifact_id, [])),
        ))
    return rows


@registry_cli.command("compare")
@click.argument("artifact_ids", nargs=-1, required=True)
@_task_option
@click.option("--hardware-tag", default=None, help="Profile to read latency from (default: the first one found).")
@click.option("--size", default="256", show_default=True, help="N or HxW: latency at the measured size nearest this.")
@_json_option
def compare_cmd(artifact_ids: tuple[str, ...], task: str | None, hardware_tag: str | None, size: str, as_json: bool) -> None:
    """Compare artifacts side by side: MACs, size, quality, measured latency, where promoted."""
    height, width = parse_resolution(size, "--size")
    rows = compare_rows(_registry(), list(artifact_ids), task, hardware_tag, height, width)
    if as_json:
        _emit_json(rows)
        return
    from rich.table import Table

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    table = Table(title=f"latency on {rows[0].hardware_tag or hardware_tag or '(no profile)'}")
    for col in ("id", "method", "prec", "MACs", "params", "size", "PSNR/teacher", "SSIM/teacher", "HxW", "p50 ms", "p95 ms", "promoted"):
        table.add_column(col, justify="right" if col not in ("id", "method", "promoted") else "left")
    for r in rows:
        table.add_row(r.artifact_id, r.method, r.precision, _fmt_macs(r.macs), _fmt_params(r.params), _fmt_bytes(r.total_bytes),
                      num(r.psnr_to_teacher, ".2f"), num(r.ssim_to_teacher, ".3f"), r.size or "-",
                      num(r.p50_ms, ".1f"), num(r.p95_ms, ".1f"), ",".join(r.promoted_in) or "-")
    _console().print(table)


@registry_cli.command("verify")
@click.argument("artifact_id")
@_task_option
@_json_option
def verify_cmd(artifact_id: str, task: str | None, as_json: bool) -> None:
    """Download and re-hash every file against the manifest (exit 5 on any mismatch)."""
    m = _registry().verify(artifact_id, task)
    if as_json:
        _emit_json({"artifact_id": m.artifact_id, "task": m.task, "verified": True, "files": len(m.files)})
    else:
        click.echo(f"ok: {m.artifact_id} ({m.task}): {len(m.files)} file(s) match their sha256")


@registry_cli.command("pull")
@click.argument("artifact_id")
@_task_option
@click.option("--offline-ok", is_flag=True, help="Use a verified cached copy if the registry is unreachable.")
@_json_option
def pull_cmd(artifact_id: str, task: str | None, offline_ok: bool, as_json: bool) -> None:
    """Download into the local cache (verified before it is placed) and print its path."""
    path = _registry().pull(artifact_id, task, allow_offline=offline_ok)
    if as_json:
        _emit_json({"artifact_id": artifact_id, "path": str(path)})
    else:
        click.echo(str(path))


@registry_cli.command("add-profile")
@click.argument("artifact_id")
@click.argument("profile_json", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_task_option
@_json_option
def add_profile_cmd(artifact_id: str, profile_json: Path, task: str | None, as_json: bool) -> None:
    """Attach a hardware profile (JSON, HardwareProfile schema) to an artifact."""
    from registry.manifest import HardwareProfile

    try:
        profile = HardwareProfile.model_validate_json(profile_json.read_bytes())
    except ValueError as exc:
        raise InvalidInput(f"{profile_json} is not a valid hardware profile: {str(exc).splitlines()[0]}") from exc
    m = _registry().add_profile(artifact_id, profile, task)
    if as_json:
        _emit_json(m)
    else:
        click.echo(f"profile {profile.hardware_tag} recorded for {m.artifact_id} ({m.task})")


def _alias_out(alias, as_json: bool, verb: str) -> None:  # noqa: ANN001
    if as_json:
        _emit_json(alias)
    else:
        click.echo(
            f"{verb} {alias.task}/{alias.channel} -> revision {alias.revision}: {' '.join(alias.artifacts)}"
        )


@registry_cli.command("promote")
@click.option("--task", required=True)
@click.option("--channel", required=True, help="e.g. production, staging")
@click.argument("artifact_ids", nargs=-1, required=True)
@click.option("--expect-revision", type=int, default=None, help="Fail (exit 3) unless the alias is at this revision (0 = never promoted).")
@click.option("--reason", default=None, help="Recorded in the audit log.")
@click.option("--actor", default=None, help="Who (default: POCKETGAN_ACTOR or user@host).")
@_json_option
def promote_cmd(task: str, channel: str, artifact_ids: tuple[str, ...], expect_revision: int | None, reason: str | None, actor: str | None, as_json: bool) -> None:
    """Make ARTIFACT_IDS the promoted set of TASK/CHANNEL (compare-and-swap; exit 3 on a lost race)."""
    alias = _registry().promote(task, channel, list(artifact_ids), expect_revision=expect_revision, actor=actor, reason=reason)
    _alias_out(alias, as_json, "promoted")


@registry_cli.command("rollback")
@click.option("--task", required=True)
@click.option("--channel", required=True)
@click.option("--expect-revision", type=int, default=None)
@click.option("--reason", default=None)
@click.option("--actor", default=None)
@_json_option
def rollback_cmd(task: str, channel: str, expect_revision: int | None, reason: str | None, actor: str | None, as_json: bool) -> None:
    """Make the previous promoted set current again."""
    alias = _registry().rollback(task, channel, expect_revision=expect_revision, actor=actor, reason=reason)
    _alias_out(alias, as_json, "rolled back")


@registry_cli.command("alias")
@click.option("--task", required=True)
@click.option("--channel", required=True)
@_json_option
def alias_cmd(task: str, channel: str, as_json: bool) -> None:
    """Show the current promoted set and its revision."""
    snap = _registry().read_alias(task, channel)
    if as_json:
        _emit_json(snap)
        return
    a = snap.alias
    click.echo(f"{a.task}/{a.channel} revision {a.revision} (by {a.updated_by} at {a.updated_at.isoformat()}): {' '.join(a.artifacts)}")
    for i, s in enumerate(reversed(a.history), 1):
        click.echo(f"  previous[-{i}]: {' '.join(s)}")


@registry_cli.command("history")
@click.option("--task", required=True)
@click.option("--channel", default=None)
@_json_option
def history_cmd(task: str, channel: str | None, as_json: bool) -> None:
    """The audit log: who published/promoted/rolled back/retired what, and when.

    An event that does not parse is listed as corrupt and the rest still shown, then exit 5."""
    events, corrupt = _registry().history_status(task, channel)
    bad = [f"{c.key}: {c.reason}" for c in corrupt]
    if as_json:
        _emit_json([*events, *({"key": c.key, "corrupt": c.reason} for c in corrupt)])
        _exit_if_corrupt(bad)
        return
    from rich.table import Table

    table = Table(title=f"history of {task}" + (f"/{channel}" if channel else ""))
    for col in ("at (UTC)", "action", "channel", "actor", "revision", "from", "to", "reason"):
        table.add_column(col)
    for e in events:
        rev = "" if e.to_revision is None else f"{e.from_revision or 0}->{e.to_revision}"
        table.add_row(
            e.at.strftime("%Y-%m-%d %H:%M:%S"), e.action, e.channel or "", e.actor, rev,
            " ".join(e.from_set), " ".join(e.to_set), e.reason or "",
        )
    for c in corrupt:
        table.add_row("?", "[red]CORRUPT[/red]", "", "", "", "", "", c.key.rsplit("/", 1)[-1])
    _console().print(table)
    _exit_if_corrupt(bad)


@registry_cli.command("retire")
@click.argument("artifact_id")
@_task_option
@click.option("--actor", default=None)
@_json_option
def retire_cmd(artifact_id: str, task: str | None, actor: str | None, as_json: bool) -> None:
    """Hide an artifact from `ls` and forbid promoting it (refused while it is promoted; works on an
    artifact whose manifest is corrupt)."""
    m = _registry().retire(artifact_id, task, actor=actor)
    if as_json:
        _emit_json({"artifact_id": m.artifact_id, "task": m.task, "retired": True})
    else:
        click.echo(f"retired {m.artifact_id} ({m.task})")


@registry_cli.command("presign")
@click.argument("artifact_id")
@_task_option
@click.option("--path", "file_path", default="model.onnx", show_default=True)
@click.option("--expires", type=click.IntRange(1, 7 * 24 * 3600), default=900, show_default=True, help="Seconds.")
@_json_option
def presign_cmd(artifact_id: str, task: str | None, file_path: str, expires: int, as_json: bool) -> None:
    """Print a time-limited download URL for one file of an artifact."""
    url = _registry().presign(artifact_id, file_path, task, expires_s=expires)
    if as_json:
        _emit_json({"artifact_id": artifact_id, "path": file_path, "url": url, "expires_s": expires})
    else:
        click.echo(url)


@registry_cli.command("tasks")
@_json_option
def tasks_cmd(as_json: bool) -> None:
    """List tasks that have artifacts."""
    tasks = _registry().tasks()
    if as_json:
        click.echo(json.dumps(tasks))
    else:
        for t in tasks:
            click.echo(t)


