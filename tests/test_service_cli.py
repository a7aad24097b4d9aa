"""`pocketgan serve`: wired into the single CLI; options become the service's env variables."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pocketgan.cli import cli
from service.cli import SERVICE_REF, huge_page_malloc_warning, malloc_tunables, serve_command, serve_env
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


def test_malloc_tunables_add_huge_pages_and_keep_the_callers() -> None:
    assert malloc_tunables(None) == "glibc.malloc.hugetlb=1"
    assert malloc_tunables("") == "glibc.malloc.hugetlb=1"
    assert malloc_tunables("glibc.malloc.arena_max=2") == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    # an operator's own choice wins, also "off"
    assert malloc_tunables("glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2") == "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2"
    assert malloc_tunables(malloc_tunables(None)) == malloc_tunables(None)  # idempotent
    env = serve_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, workers=None, tasks=(), channel=None,
                    hardware_tag=None, poll_interval_s=None, max_concurrency=None, timeout_s=None)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"


def test_a_worker_warns_when_huge_pages_are_asked_for_but_thp_is_never(tmp_path: Path) -> None:
    thp = tmp_path / "enabled"
    thp.write_text("always madvise [never]\n")
    warning = huge_page_malloc_warning("glibc.malloc.hugetlb=1", thp)
    assert warning is not None and "transparent huge pages are off" in warning and "[never]" in warning
    assert huge_page_malloc_warning("glibc.foo=2:glibc.malloc.hugetlb=1", thp) is not None
    assert huge_page_malloc_warning("glibc.malloc.hugetlb=0", thp) is None  # the operator turned it off
    assert huge_page_malloc_warning(None, thp) is None
    for mode in ("always [madvise] never\n", "[always] madvise never\n"):
        thp.write_text(mode)
        assert huge_page_malloc_warning("glibc.malloc.hugetlb=1", thp) is None
    assert huge_page_malloc_warning("glibc.malloc.hugetlb=1", tmp_path / "absent") is None  # cannot tell: quiet
