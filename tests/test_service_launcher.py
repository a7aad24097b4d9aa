"""service.launcher: the one way demo, tests and benchmarks start and stop `bentoml serve`.

Stopping is checked on real process groups (a shell with children that ignore SIGTERM or outlive
their leader), start-up failure on a real `bentoml serve` that cannot start.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import pid_alive
from service.launcher import ServiceProcess, ServiceStartError, stop_process_group


def _group(script: str, tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    """A process group whose leader runs `script`; the children write their pids to a file."""
    pids = tmp_path / "pids"
    proc = subprocess.Popen(["sh", "-c", script.replace("PIDS", str(pids))], start_new_session=True)
    deadline = time.monotonic() + 10
    while not (pids.exists() and len(pids.read_text().split()) >= 2):
        assert time.monotonic() < deadline, "children never started"
        time.sleep(0.05)
    return proc, [int(p) for p in pids.read_text().split()]


def test_stop_kills_children_that_ignore_sigterm(tmp_path: Path) -> None:
    proc, children = _group("for i in 1 2; do (trap '' TERM; echo $(exec sh -c 'echo $PPID') >> PIDS; "
                            "while :; do sleep 1; done) & done; wait", tmp_path)
    stop_process_group(proc, grace_s=1.0)
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in children)
    assert proc.poll() is not None
    stop_process_group(proc, grace_s=1.0)  # twice is harmless


def test_stop_reaches_children_whose_leader_already_exited(tmp_path: Path) -> None:
    proc, children = _group("for i in 1 2; do (echo $(exec sh -c 'echo $PPID') >> PIDS; "
                            "while :; do sleep 1; done) & done; exit 0", tmp_path)
    proc.wait(timeout=10)
    assert all(pid_alive(p) for p in children)  # orphaned workers still running
    stop_process_group(proc, grace_s=5.0)
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in children)


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    """A port already taken: bentoml serve exits, and the error carries the log's cause."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with ServiceProcess(env, tmp_path / "serve.log", port=port) as server, \
                pytest.raises(ServiceStartError) as info:
            server.wait_for("/livez", timeout_s=120)
    message = str(info.value)
    assert "exited" in message and str(tmp_path / "serve.log") in message and "Address already in use" in message
    assert server.proc is not None and server.proc.poll() is not None


def test_sigterm_unwinds_only_inside_its_block() -> None:
    """`pocketgan demo` runs its server inside this: a SIGTERM to the demo unwinds the `with` that stops it."""
    import signal
    import threading

    from service.launcher import sigterm_unwinds

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited:
        with sigterm_unwinds():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
    assert exited.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # restored: the caller's process is as it was

    errors: list[BaseException] = []

    def off_main() -> None:
        try:
            with sigterm_unwinds():  # Python only sets handlers on the main thread: a no-op here
                pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=off_main)
    t.start()
    t.join()
    assert errors == [] and signal.getsignal(signal.SIGTERM) is before
