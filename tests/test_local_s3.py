"""`pocketgan s3 up/status/down` on its own directory and port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry.local_s3 import GRPC_OFFSET, free_port_pair, read_state, start_local_s3, stop


def _pocketgan() -> list[str]:
    exe = Path(sys.executable).parent / "pocketgan"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "pocketgan"]


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_pocketgan(), *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive; /proc tells us
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_s3_up_status_down(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POCKETGAN_"))}
    data_dir = tmp_path / "s3"
    port = free_port_pair()
    up = _run("s3", "up", "--dir", str(data_dir), "--port", str(port), "--bucket", "devbucket", env=env)
    state = read_state(data_dir)
    try:
        assert up.returncode == 0, up.stderr
        exports = dict(
            line[len("export ") :].split("=", 1) for line in up.stdout.splitlines() if line.startswith("export ")
        )
        assert exports["POCKETGAN_S3_ENDPOINT"] == f"http://127.0.0.1:{port}"
        assert exports["POCKETGAN_REGISTRY"].startswith("s3://devbucket/")
        assert exports["AWS_ACCESS_KEY_ID"] and exports["AWS_SECRET_ACCESS_KEY"]
        assert state is not None and state.port == port and _alive(state.pid)

        # the printed variables are all a client needs: the registry works with them
        client_env = {**env, **exports, "POCKETGAN_CACHE_DIR": str(tmp_path / "cache")}
        listed = _run("registry", "ls", "--json", env=client_env)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.strip() == "[]"
        # credentials are enforced
        bad = _run("registry", "ls", env={**client_env, "AWS_SECRET_ACCESS_KEY": "wrong"})
        assert bad.returncode == 6 and "access denied" in bad.stderr

        status = _run("s3", "status", "--dir", str(data_dir), env=env)
        assert status.returncode == 0 and exports["POCKETGAN_S3_ENDPOINT"] in status.stdout
        # up again is idempotent: same server, same variables
        again = _run("s3", "up", "--dir", str(data_dir), env=env)
        assert again.returncode == 0 and read_state(data_dir).pid == state.pid

        down = _run("s3", "down", "--dir", str(data_dir), env=env)
        assert down.returncode == 0, down.stderr
        assert not _alive(state.pid)
        assert read_state(data_dir) is None
        assert _run("s3", "status", "--dir", str(data_dir), env=env).returncode == 1
        assert _run("s3", "down", "--dir", str(data_dir), env=env).returncode != 0
    finally:
        if state is not None:
            stop(state.pid)


def test_start_refuses_a_busy_port(tmp_path: Path) -> None:
    import socket

    busy = free_port_pair()  # a port whose gRPC twin (+GRPC_OFFSET) exists and is free too
    assert busy + GRPC_OFFSET <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", busy))
        s.listen(1)
        with pytest.raises(Exception, match="already in use"):
            start_local_s3(tmp_path / "busy", port=busy)
