"""`pocketgan serve`: wired into the single CLI; options become the service's env variables."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pocketgan.cli import cli
from service.cli import SERVICE_REF, serve_command, serve_env
from service.settings import ServiceSettings


def test_serve_is_a_pocketgan_subcommand() -> None:
    r = CliRunner().invoke(cli, ["serve", "--help"])
    assert r.exit_code == 0 and "--workers" in r.output and "--poll-interval" in r.output


def test_options_become_settings(monkeypatch) -> None:
    env = serve_env({}, workers=2, tasks=("a", "b"), channel="canary", hardware_tag="cpu-x", poll_interval_s=1.5,
                    max_concurrency=8, timeout_s=5.0)
    assert env["POCKETGAN_SERVICE_WORKERS"] == "2" and env["BENTOML_DO_NOT_TRACK"] == "True"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = ServiceSettings()
    assert s.tasks == ["a", "b"] and s.channel == "canary" and s.poll_interval_s == 1.5
    assert s.resolved_hardware_tag() == "cpu-x"
    assert json.loads(env["POCKETGAN_SERVICE_TASKS"]) == ["a", "b"]
    cmd = serve_command(3001, "127.0.0.1")
    assert SERVICE_REF in cmd and cmd[cmd.index("--port") + 1] == "3001"


def test_bad_task_is_refused_before_starting() -> None:
    r = CliRunner().invoke(cli, ["serve", "--tasks", "../x"])
    assert r.exit_code != 0
