"""The single `pocketgan` entry point.

Sub-command groups are imported lazily, so `pocketgan registry ls` never pays for importing
torch, and each area keeps its own CLI module next to its code.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

# command name -> (module path, attribute, one-line help shown in `pocketgan --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "s3": ("registry.local_s3", "s3_cli", "Start/stop a local SeaweedFS S3 server for development."),
    "registry": ("registry.cli", "registry_cli", "Publish, inspect, verify, pull, promote and roll back artifacts."),
    "macs": ("compression_jobs.cli", "macs_cli", "Count MACs and parameters of a generator architecture."),
    "export": ("compression_jobs.cli", "export_cli", "Export a generator checkpoint to an ONNX artifact directory."),
    "quantize": ("compression_jobs.cli", "quantize_cli", "INT8-quantize an ONNX artifact with calibration on real images."),
    "profile": ("compression_jobs.cli", "profile_cli", "Measure latency on this machine and record it in the registry."),
    "profile-ops": ("compression_jobs.optables_cli", "profile_ops_cli",
                    "Measure the student design space's block latencies here; store the table in the registry."),
    "compress": ("compression_jobs.compress_cli", "compress_cli", "Compression jobs: train a teacher, distil, search, publish."),
    "serve": ("service.cli", "serve_cli", "Run the BentoML translation service."),
    "demo": ("pocketgan.demo", "demo_cli", "Compress a real pretrained teacher, publish, serve and compare, end to end."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, (mod, _, _) in COMMANDS.items() if _available(mod))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        if not _available(module):
            return None
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="POCKETGAN_DEBUG", help="Show tracebacks on errors.")
@click.version_option(package_name="pocketgan")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """pocketgan: compress image-to-image GANs, keep them in an S3 registry, serve them by latency budget."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with one error convention for every group (README "Exit codes"): a failure is one
    `error: …` line on stderr (never a traceback unless --debug / POCKETGAN_DEBUG), stdout stays
    empty, and the exit code says what kind of failure it was: 2 usage, 3 conflict, 4 not found,
    5 integrity, 6 S3 unreachable, 7 not a servable generator, 8 configuration/credentials,
    9 execution provider not usable, 1 anything else, 130 interrupted."""
    from registry.errors import RegistryError

    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(os.environ.get("POCKETGAN_DEBUG"))
    try:
        rc = cli.main(args=argv, prog_name="pocketgan", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        if exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
            click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(USAGE)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except RegistryError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen failure: one line, the traceback on --debug
        if debug:
            raise
        first = (str(exc).splitlines() or [""])[0]
        click.echo(f"error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    # With standalone_mode=False click returns a command's ctx.exit(code) instead of raising it.
    sys.exit(rc if isinstance(rc, int) else 0)


USAGE = 2
