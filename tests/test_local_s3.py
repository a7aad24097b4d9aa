"""`pocketgan s3 up/status/down` on its own directory and port, and what the local server exposes.

Security properties (issue 12, point 7): only the S3 port accepts a request from another local
process without a key the server's data dir holds; the secret is random per data dir, persisted
0600 and reused on restart; it is printed only with --show-secret.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import pid_alive
from registry.local_s3 import (
    CONFIG_DIR,
    GRPC_OFFSET,
    SECRET_FILE,
    STATE_FILE,
    LocalS3Handle,
    free_port_pair,
    read_state,
    start_local_s3,
    stop,
)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _pocketgan() -> list[str]:
    exe = Path(sys.executable).parent / "pocketgan"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "pocketgan"]


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_pocketgan(), *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POCKETGAN_"))}


def _eval_exports(stdout: str, env: dict[str, str]) -> dict[str, str]:
    """What a shell gets from `eval "$(pocketgan s3 up)"` (the documented use)."""
    out = subprocess.run(
        ["bash", "-c", 'eval "$EXPORTS" && env -0'],
        env={**env, "EXPORTS": stdout}, capture_output=True, check=True, timeout=30,
    ).stdout.decode()
    got = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in got.items() if k.startswith(("AWS_", "POCKETGAN_"))}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_s3_up_status_down_restart(tmp_path: Path) -> None:
    env = _clean_env()
    data_dir = tmp_path / "s3"
    port = free_port_pair()
    up = _run("s3", "up", "--dir", str(data_dir), "--port", str(port), "--bucket", "devbucket", env=env)
    state = read_state(data_dir)
    restarted: LocalS3Handle | None = None
    try:
        assert up.returncode == 0, up.stderr
        assert state is not None and state.port == port and pid_alive(state.pid)
        secret = state.secret_key.get_secret_value()
        # the secret is never printed by default; the shell reads it from its 0600 file
        assert secret not in up.stdout and secret not in up.stderr
        exports = _eval_exports(up.stdout, env)
        assert exports["POCKETGAN_S3_ENDPOINT"] == f"http://127.0.0.1:{port}"
        assert exports["POCKETGAN_REGISTRY"].startswith("s3://devbucket/")
        assert exports["AWS_ACCESS_KEY_ID"] == "pocketgan" and exports["AWS_SECRET_ACCESS_KEY"] == secret

        # the evaluated variables are all a client needs: the registry works with them
        client_env = {**env, **exports, "POCKETGAN_CACHE_DIR": str(tmp_path / "cache")}
        listed = _run("registry", "ls", "--json", env=client_env)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.strip() == "[]"
        # credentials are enforced, and the old fixed default secret is not accepted
        for wrong in ("wrong", "pocketgan-secret"):
            bad = _run("registry", "ls", env={**client_env, "AWS_SECRET_ACCESS_KEY": wrong})
            assert bad.returncode == 8 and "access denied" in bad.stderr  # credentials: configuration, not "unreachable"

        status = _run("s3", "status", "--dir", str(data_dir), env=env)
        assert status.returncode == 0 and exports["POCKETGAN_S3_ENDPOINT"] in status.stdout
        assert secret not in status.stdout + status.stderr
        shown = _run("s3", "status", "--dir", str(data_dir), "--show-secret", env=env)
        assert shown.returncode == 0 and f"export AWS_SECRET_ACCESS_KEY={secret}" in shown.stdout
        # up again is idempotent: same server, same variables
        again = _run("s3", "up", "--dir", str(data_dir), env=env)
        assert again.returncode == 0 and read_state(data_dir).pid == state.pid
        assert _eval_exports(again.stdout, env) == exports

        state.boto3_client().put_object(Bucket="devbucket", Key="kept.txt", Body=b"kept")
        down = _run("s3", "down", "--dir", str(data_dir), env=env)
        assert down.returncode == 0, down.stderr
        assert not pid_alive(state.pid)
        assert read_state(data_dir) is None
        assert _run("s3", "status", "--dir", str(data_dir), env=env).returncode == 4  # not found: nothing running
        assert _run("s3", "down", "--dir", str(data_dir), env=env).returncode != 0

        # a restart on the same dir reuses its secret: clients keep working, data is still there
        restarted = start_local_s3(data_dir, bucket="devbucket")
        assert restarted.secret_key.get_secret_value() == secret
        body = restarted.boto3_client().get_object(Bucket="devbucket", Key="kept.txt")["Body"].read()
        assert body == b"kept"
    finally:
        if state is not None:
            stop(state.pid)
        if restarted is not None:
            stop(restarted.pid)


def test_secret_is_random_per_data_dir_and_private(tmp_path: Path) -> None:
    """Two data dirs get two different random secrets; secret, state file and dir are this user's only."""
    env = _clean_env()
    handles: list[LocalS3Handle] = []
    try:
        for name in ("a", "b"):
            up = _run("s3", "up", "--dir", str(tmp_path / name), "--show-secret", env=env)
            assert up.returncode == 0, up.stderr
            handle = read_state(tmp_path / name)
            handles.append(handle)
            secret = handle.secret_key.get_secret_value()
            assert f"export AWS_SECRET_ACCESS_KEY={secret}" in up.stdout  # asked for: shown
            assert len(secret) >= 32 and secret != "pocketgan-secret"
            assert (tmp_path / name / SECRET_FILE).read_text().strip() == secret
            assert _mode(tmp_path / name / SECRET_FILE) == 0o600
            assert _mode(tmp_path / name / STATE_FILE) == 0o600
            assert _mode(tmp_path / name) == 0o700
            assert _mode(tmp_path / name / CONFIG_DIR / "security.toml") == 0o600
            state_text = (tmp_path / name / STATE_FILE).read_text()
            assert secret not in state_text and "secret" not in json.loads(state_text)
            assert secret not in repr(handle)
        assert handles[0].secret_key.get_secret_value() != handles[1].secret_key.get_secret_value()
    finally:
        for handle in handles:
            stop(handle.pid)


def _http(port: int, method: str, path: str, body: bytes | None = None) -> int:
    """Status of one plain HTTP request from "another local process" (no keys, no certificates)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/octet-stream"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_only_credentialed_s3_can_touch_objects(s3_server: LocalS3Handle) -> None:
    """The issue's attack: `curl -X PUT` to the filer port rewrote `aliases/.../production.json` (201)."""
    client = s3_server.boto3_client()
    key = f"lockdown-{uuid.uuid4().hex[:8]}/aliases/facades/production.json"
    original = b'{"artifact_id": "good"}'
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=original)
    ports = s3_server.internal_ports
    assert set(ports) == {"master", "volume", "filer", "admin"}
    object_path = f"/buckets/{s3_server.bucket}/{key}"

    attempts = [
        ("filer", "PUT", object_path, b'{"artifact_id": "evil"}'),
        ("filer", "POST", object_path, b'{"artifact_id": "evil"}'),
        ("filer", "DELETE", object_path, None),
        ("filer", "GET", object_path, None),
        ("filer", "GET", f"/buckets/{s3_server.bucket}/", None),  # directory listing
        ("filer", "POST", "/.tus/evil", b""),
        ("master", "GET", f"/col/delete?collection={s3_server.bucket}", None),
        ("master", "GET", "/dir/assign", None),
        ("master", "POST", "/submit", b"evil"),
        ("volume", "PUT", "/1,01637037d6", b"evil"),
        ("volume", "DELETE", "/1,01637037d6", None),
        ("volume", "GET", "/1,01637037d6", None),
        ("admin", "GET", "/api/cluster/topology", None),
        ("admin", "GET", "/", None),
        # and the S3 port itself without credentials (anonymous access is off)
        ("s3", "PUT", f"/{s3_server.bucket}/{key}", b'{"artifact_id": "evil"}'),
        ("s3", "DELETE", f"/{s3_server.bucket}/{key}", None),
        ("s3", "GET", f"/{s3_server.bucket}/{key}", None),
    ]
    ports = {**ports, "s3": s3_server.port}
    for component, method, path, body in attempts:
        # a status proves the port is alive (not a vacuous "connection refused")
        status = _http(ports[component], method, path, body)
        assert status in (401, 403, 404, 405), (component, method, path, status)
    assert client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == original


def _h2_probe(port: int, *, tls: bool, cert: tuple[Path, Path] | None = None) -> bytes | str:
    """Speak the first bytes of gRPC (HTTP/2) to `port`: the server's first frame, or the error."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock: socket.socket = raw
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            if cert is not None:
                ctx.load_cert_chain(str(cert[0]), str(cert[1]))
            sock = ctx.wrap_socket(raw, server_hostname="localhost")
        sock.sendall(H2_PREFACE)
        return sock.recv(9)
    except (ssl.SSLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        raw.close()


def _is_h2_settings(answer: bytes | str) -> bool:
    return isinstance(answer, bytes) and len(answer) == 9 and answer[3] == 0x04


def test_grpc_ports_demand_this_servers_client_certificate(s3_server: LocalS3Handle) -> None:
    """gRPC (filer CreateEntry/DeleteEntry, master DeleteCollection, ...) needs mutual TLS with the
    per-start CA: plaintext and certificate-less TLS get nothing; the server's own certificate works."""
    tls_dir = s3_server.data_dir / CONFIG_DIR / "tls"
    own_cert = (tls_dir / "node.pem", tls_dir / "node.key")
    grpc_ports = [p + GRPC_OFFSET for p in (*s3_server.internal_ports.values(), s3_server.port)]
    for port in grpc_ports:
        assert not _is_h2_settings(plain := _h2_probe(port, tls=False)), (port, plain)
        assert not _is_h2_settings(no_cert := _h2_probe(port, tls=True)), (port, no_cert)
        # control: with the certificate the same probe gets the server's HTTP/2 SETTINGS frame
        assert _is_h2_settings(with_cert := _h2_probe(port, tls=True, cert=own_cert)), (port, with_cert)
    assert _mode(own_cert[1]) == 0o600


def _listening_tcp(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket `pid` listens on, from /proc (no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                addr_hex, port_hex = fields[1].split(":")
                if table == "tcp":
                    addr = socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr_hex)[::-1])
                else:
                    addr = "ipv6:" + addr_hex
                found.add((addr, int(port_hex, 16)))
    return found


def test_listens_only_on_loopback_ports_it_recorded(s3_server: LocalS3Handle) -> None:
    """No WebDAV, no Iceberg/Lance catalog, no debug/metrics port: exactly S3 + the four locked
    components (HTTP and gRPC), all on 127.0.0.1."""
    http_ports = [s3_server.port, *s3_server.internal_ports.values()]
    expected = {("127.0.0.1", p) for p in http_ports} | {("127.0.0.1", p + GRPC_OFFSET) for p in http_ports}
    assert _listening_tcp(s3_server.pid) == expected
    # the secret is in weed's environment (owner-only /proc/PID/environ), never on its command line
    cmdline = Path(f"/proc/{s3_server.pid}/cmdline").read_bytes()
    assert s3_server.secret_key.get_secret_value().encode() not in cmdline


def test_start_refuses_a_busy_port(tmp_path: Path) -> None:
    busy = free_port_pair()  # a port whose gRPC twin (+GRPC_OFFSET) exists and is free too
    assert busy + GRPC_OFFSET <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", busy))
        s.listen(1)
        with pytest.raises(Exception, match="already in use"):
            start_local_s3(tmp_path / "busy", port=busy)


def test_invalid_bucket_is_refused_before_starting(tmp_path: Path) -> None:
    """A bucket S3 would reject fails at once with the rule, instead of a start-up that never gets ready."""
    up = _run("s3", "up", "--dir", str(tmp_path / "s3"), "--bucket", "b", env=_clean_env())
    assert up.returncode == 1 and "invalid bucket name 'b'" in up.stderr
    assert read_state(tmp_path / "s3") is None and not (tmp_path / "s3").exists()


def test_sockets_of_a_long_data_dir_go_to_a_private_short_dir(tmp_path: Path) -> None:
    """Unix socket names are limited to 108 bytes: a long --dir still starts, its sockets in a 0700 dir."""
    data_dir = tmp_path / ("d" * 100)
    handle = start_local_s3(data_dir, bucket="long-dir")
    sock_dirs: set[Path] = set()
    try:
        client = handle.boto3_client()
        client.put_object(Bucket="long-dir", Key="k", Body=b"v")
        assert client.get_object(Bucket="long-dir", Key="k")["Body"].read() == b"v"
        socket_args = [a for a in Path(f"/proc/{handle.pid}/cmdline").read_bytes().split(b"\0")
                       if a.startswith((b"-filer.localSocket=", b"-s3.localSocket="))]
        assert len(socket_args) == 2
        for arg in socket_args:
            sock_dir = Path(os.fsdecode(arg.split(b"=", 1)[1])).parent
            sock_dirs.add(sock_dir)
            assert len(os.fsencode(sock_dir)) < 100 and _mode(sock_dir) == 0o700
    finally:
        stop(handle.pid)
        for d in sock_dirs:
            shutil.rmtree(d, ignore_errors=True)
