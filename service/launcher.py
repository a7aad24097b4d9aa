"""Run `bentoml serve` of the pocketgan service as a child process, and stop all of it.

One launcher for the demo, the tests and the benchmarks, so a fix (e.g. for a leaked worker)
reaches every caller. The server runs in its own process group (BentoML forks workers): stopping
signals the whole group, SIGTERM first, SIGKILL for whatever is left after a grace period, and
also when the leader already exited but a worker did not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Iterator

import httpx

from service.cli import REPO_ROOT, malloc_tunables, serve_command


class ServiceStartError(RuntimeError):
    """The service exited, or did not answer in time, while we waited for it (message ends with its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on `host` (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def exit_on_sigterm() -> None:
    """For a script that starts servers: SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so its
    `finally` / `with` blocks stop them; they run in sessions of their own and never see the signal."""
    signal.signal(signal.SIGTERM, _raise_exit)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """`exit_on_sigterm` for the length of a block, the previous handler restored after it: for a command
    that may also run in-process (a test's CliRunner). Off the main thread Python cannot set handlers: no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_process_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the group of a process started with `start_new_session=True`; SIGKILL what is left
    after `grace_s`. Safe to call twice, and after the leader exited."""
    pgid = proc.pid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
    proc.wait()


class ServiceProcess:
    """`bentoml serve service.service:PocketGAN` on `host:port`, configured by `env` (POCKETGAN_SERVICE_*, ...).

    Use as a context manager: the whole process group is stopped when the block ends, also when
    waiting for readiness fails.
    """

    def __init__(self, env: dict[str, str], log: Path, *, port: int | None = None, host: str = "127.0.0.1",
                 cwd: Path = REPO_ROOT) -> None:
        self.env, self.log, self.host, self.cwd = env, Path(log), host, cwd
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServiceProcess":
        """Start the server (its output appended to `log`); returns at once."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            env = {**self.env, "GLIBC_TUNABLES": malloc_tunables(self.env.get("GLIBC_TUNABLES"))}
            self.proc = subprocess.Popen(serve_command(self.port, self.host), cwd=self.cwd, env=env, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def tail(self, lines: int = 40) -> str:
        """The end of the server's log (for error messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for(self, path: str = "/readyz", timeout_s: float = 120.0, interval_s: float = 0.3) -> None:
        """Until GET `path` answers 200 (`/livez`: up; `/readyz`: models loaded and warmed up).

        ServiceStartError if the server exits first or `timeout_s` passes."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=5.0) as c:
            while True:
                if self.proc.poll() is not None:
                    raise ServiceStartError(f"bentoml serve exited {self.proc.returncode} (log {self.log}):\n{self.tail()}")
                try:
                    if c.get(path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise ServiceStartError(f"{self.url}{path} not 200 after {timeout_s:.0f} s (log {self.log}):\n"
                                            f"{self.tail()}")
                time.sleep(interval_s)

    def wait(self) -> int | None:
        """Block until the server exits (its exit code) or Ctrl-C (None)."""
        assert self.proc is not None, "start() first"
        try:
            return self.proc.wait()
        except KeyboardInterrupt:
            return None

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, grace_s)

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
