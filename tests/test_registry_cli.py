"""`pocketgan registry …` as a user runs it: subprocesses, real SeaweedFS, exit codes and --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry.artifact import sha256_file
from registry.local_s3 import start_local_s3, stop

HANG_GUARD_S = 60  # a hung command fails the test instead of blocking the suite (not a perf assertion)


def _pocketgan() -> list[str]:
    exe = Path(sys.executable).parent / "pocketgan"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "pocketgan"]


def run(env: dict[str, str], *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*_pocketgan(), *args], env=env, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False
    )
    if expect is not None:
        assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    return proc


def run_json(env: dict[str, str], *args: str):  # noqa: ANN201
    return json.loads(run(env, *args, "--json").stdout)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_cli_round_trip(registry_env: dict[str, str], make_tiny_onnx, tmp_path: Path) -> None:
    env = registry_env
    model = make_tiny_onnx(seed=1)
    pub = run_json(env, "registry", "publish", str(model), "--task", "facades", "--method", "teacher")
    aid = pub["artifact_id"]
    assert pub["created"] is True and aid == sha256_file(model)[:16]
    again = run_json(env, "registry", "publish", str(model), "--task", "facades", "--method", "teacher")
    assert again == {**pub, "created": False}

    listed = run_json(env, "registry", "ls")
    assert [m["artifact_id"] for m in listed] == [aid]
    assert listed[0]["architecture"]["macs"] == 2 * 8 * 3 * 9 * 256 * 256
    assert run_json(env, "registry", "ls", "--method", "omgd") == []
    assert aid in run(env, "registry", "ls").stdout  # human table

    shown = run_json(env, "registry", "show", aid)
    assert shown["task"] == "facades" and shown["files"][0]["sha256"] == sha256_file(model)
    assert run_json(env, "registry", "verify", aid)["verified"] is True

    pulled = Path(run_json(env, "registry", "pull", aid)["path"])
    assert pulled == Path(env["POCKETGAN_CACHE_DIR"]) / "artifacts" / "facades" / aid
    assert sha256_file(pulled / "model.onnx") == sha256_file(model)

    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({
        "hardware_tag": "cpu-test-avx2", "runtime_version": "1.20", "threads": 1,
        "measurements": [{"height": 64, "width": 64, "runs": 5, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "throughput_ips": 500.0}],
    }))
    run(env, "registry", "add-profile", aid, str(profile))
    assert [m["artifact_id"] for m in run_json(env, "registry", "ls", "--hardware-tag", "cpu-test-avx2")] == [aid]
    assert run_json(env, "registry", "ls", "--hardware-tag", "cuda-sm90") == []
    profile.write_text('{"hardware_tag": "cpu"}')
    assert "not a valid hardware profile" in _one_line_error(run(env, "registry", "add-profile", aid, str(profile), expect=2))

    # promote / alias / rollback / history
    other = run_json(env, "registry", "publish", str(make_tiny_onnx(seed=2)), "--task", "facades", "--method", "omgd")["artifact_id"]
    p1 = run_json(env, "registry", "promote", "--task", "facades", "--channel", "production", aid, "--expect-revision", "0")
    assert p1["revision"] == 1 and p1["artifacts"] == [aid]
    p2 = run_json(env, "registry", "promote", "--task", "facades", "--channel", "production", aid, other,
                  "--expect-revision", "1", "--reason", "add omgd")
    assert p2["revision"] == 2 and p2["artifacts"] == [aid, other]
    cmp = run_json(env, "registry", "compare", aid, other, "--size", "64")
    assert [(r["artifact_id"], r["method"], r["promoted_in"]) for r in cmp] == [(aid, "teacher", ["production"]), (other, "omgd", ["production"])]
    assert (cmp[0]["hardware_tag"], cmp[0]["size"], cmp[0]["p95_ms"]) == ("cpu-test-avx2", "64x64", 2.0)
    assert cmp[1]["hardware_tag"] is None and cmp[1]["p95_ms"] is None  # never profiled: no latency invented
    assert cmp[0]["macs"] == listed[0]["architecture"]["macs"]
    assert "production" in run(env, "registry", "compare", aid, other).stdout
    assert "--size" in _one_line_error(run(env, "registry", "compare", aid, "--size", "big", expect=2))
    stale = run(env, "registry", "promote", "--task", "facades", "--channel", "production", other, "--expect-revision", "1", expect=3)
    assert "revision 2" in _one_line_error(stale)
    snap = run_json(env, "registry", "alias", "--task", "facades", "--channel", "production")
    assert snap["alias"]["revision"] == 2 and snap["etag"]
    back = run_json(env, "registry", "rollback", "--task", "facades", "--channel", "production", "--expect-revision", "2")
    assert back["revision"] == 3 and back["artifacts"] == [aid]
    events = run_json(env, "registry", "history", "--task", "facades", "--channel", "production")
    assert [(e["action"], e["to_revision"]) for e in events] == [("promote", 1), ("promote", 2), ("rollback", 3)]
    assert events[-1]["from_set"] == [aid, other] and events[-1]["to_set"] == [aid]
    assert events[0]["actor"] == "pytest-cli@localhost"
    assert "rollback" in run(env, "registry", "history", "--task", "facades").stdout

    # retire: refused while promoted (3), fine otherwise, then hidden from ls
    assert "promoted in facades/production" in _one_line_error(run(env, "registry", "retire", aid, expect=3))
    assert run_json(env, "registry", "retire", other)["retired"] is True
    assert [m["artifact_id"] for m in run_json(env, "registry", "ls")] == [aid]
    assert {m["artifact_id"] for m in run_json(env, "registry", "ls", "--all")} == {aid, other}
    assert "retired" in _one_line_error(
        run(env, "registry", "promote", "--task", "facades", "--channel", "production", other, expect=3)
    )


def test_cli_publish_artifact_dir(registry_env: dict[str, str], make_tiny_onnx, tmp_path: Path) -> None:
    from registry.artifact import build_manifest, write_manifest
    from registry.manifest import Architecture

    art = make_tiny_onnx(tmp_path / "art" / "model.onnx", seed=7).parent
    manifest = build_manifest(art, task="edges2shoes", method="gan-compression", architecture=Architecture(family="mobile-resnet"))
    write_manifest(art, manifest)
    pub = run_json(registry_env, "registry", "publish", str(art))
    assert pub == {"artifact_id": manifest.artifact_id, "task": "edges2shoes", "method": "gan-compression", "created": True}
    # --task with an artifact dir is a usage error
    assert run(registry_env, "registry", "publish", str(art), "--task", "x", expect=2).returncode == 2


def test_cli_tampered_object_exit_5_and_clean_cache(registry_env: dict[str, str], s3_server, tiny_onnx: Path, registry_settings) -> None:
    aid = run_json(registry_env, "registry", "publish", str(tiny_onnx), "--task", "facades", "--method", "teacher")["artifact_id"]
    key = f"{registry_settings.prefix}/artifacts/facades/{aid}/model.onnx"
    s3_server.boto3_client().put_object(Bucket=registry_settings.bucket, Key=key, Body=b"evil bytes")
    assert key in _one_line_error(run(registry_env, "registry", "verify", aid, expect=5))
    assert key in _one_line_error(run(registry_env, "registry", "pull", aid, expect=5))
    cache = Path(registry_env["POCKETGAN_CACHE_DIR"]) / "artifacts" / "facades"
    assert not cache.exists() or list(cache.iterdir()) == []
    run(registry_env, "registry", "promote", "--task", "facades", "--channel", "production", aid, expect=5)


def test_cli_concurrent_promotes_one_winner(registry_env: dict[str, str], registry, make_tiny_onnx) -> None:
    ids = [registry.publish_model(make_tiny_onnx(seed=s), task="facades", method="omgd").manifest.artifact_id for s in range(9)]
    registry.promote("facades", "production", [ids[0]])
    procs = [
        subprocess.Popen(
            [*_pocketgan(), "registry", "promote", "--task", "facades", "--channel", "production", ids[i + 1],
             "--expect-revision", "1", "--json"],
            env=registry_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(8)
    ]
    results = [(p.wait(HANG_GUARD_S), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0] + [3] * 7, results
    winner = next(json.loads(out) for code, out, _ in results if code == 0)
    assert winner["revision"] == 2
    for code, _, err in results:
        if code == 3:
            assert "revision 2" in err
    assert registry.read_alias("facades", "production").alias.artifacts == winner["artifacts"]


@pytest.mark.parametrize("bad", ["..", "a/b", "Facades", "x" * 65])
def test_cli_invalid_names_exit_2(registry_env: dict[str, str], tiny_onnx: Path, bad: str) -> None:
    msg = _one_line_error(run(registry_env, "registry", "publish", str(tiny_onnx), "--task", bad, "--method", "teacher", expect=2))
    assert "invalid task" in msg
    msg = _one_line_error(run(registry_env, "registry", "promote", "--task", "facades", "--channel", bad, "0123456789abcdef", expect=2))
    assert "invalid channel" in msg
    run(registry_env, "registry", "ls", "--hardware-tag", bad, expect=2)


def test_cli_usage_errors_exit_2_and_configuration_8(registry_env: dict[str, str], tiny_onnx: Path) -> None:
    assert "--task and --method" in run(registry_env, "registry", "publish", str(tiny_onnx), expect=2).stderr
    run(registry_env, "registry", "promote", "--task", "facades", expect=2)
    run(registry_env, "registry", "ls", "--no-such-flag", expect=2)
    run(registry_env, "registry", "promote", "--task", "facades", "--channel", "p", "x", "--expect-revision", "abc", expect=2)
    env = {k: v for k, v in registry_env.items() if k != "POCKETGAN_REGISTRY"}
    msg = _one_line_error(run(env, "registry", "ls", expect=8))  # configuration: its own exit code
    assert "POCKETGAN_REGISTRY is not set" in msg and "pocketgan s3 up" in msg


def test_cli_not_found_exit_4_and_debug_traceback(registry_env: dict[str, str]) -> None:
    assert "not found" in _one_line_error(run(registry_env, "registry", "show", "0123456789abcdef", expect=4))
    assert "never been promoted" in _one_line_error(
        run(registry_env, "registry", "alias", "--task", "facades", "--channel", "production", expect=4)
    )
    assert "nothing to roll back" in _one_line_error(
        run(registry_env, "registry", "rollback", "--task", "facades", "--channel", "production", expect=3)
    )
    debug = run(registry_env, "--debug", "registry", "show", "0123456789abcdef", expect=None)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_cli_bucket_missing_exit_4(registry_env: dict[str, str], tiny_onnx: Path) -> None:
    env = {**registry_env, "POCKETGAN_REGISTRY": "s3://missing-bucket-xyz/reg"}
    for args in (("registry", "ls"), ("registry", "publish", str(tiny_onnx), "--task", "facades", "--method", "teacher"),
                 ("registry", "show", "0123456789abcdef", "--task", "facades")):
        msg = _one_line_error(run(env, *args, expect=4))
        assert "bucket missing-bucket-xyz does not exist" in msg and registry_env["POCKETGAN_S3_ENDPOINT"] in msg


def test_cli_s3_down_exit_6_then_offline_cache(tmp_path: Path, tiny_onnx: Path) -> None:
    """A second, throwaway server: publish + pull, kill it, then every command fails fast with exit 6."""
    server = start_local_s3(tmp_path / "s3", bucket="throwaway")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POCKETGAN_"))}
        env.update(server.env(prefix="down-test"))
        env.update({"POCKETGAN_CACHE_DIR": str(tmp_path / "cache"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"})
        aid = run_json(env, "registry", "publish", str(tiny_onnx), "--task", "facades", "--method", "teacher")["artifact_id"]
        run(env, "registry", "pull", aid)
    finally:
        assert stop(server.pid)
    for args in (("registry", "ls"), ("registry", "show", aid), ("registry", "pull", aid),
                 ("registry", "promote", "--task", "facades", "--channel", "production", aid)):
        msg = _one_line_error(run(env, *args, expect=6))  # run() has the hang guard
        assert "unreachable" in msg and server.endpoint in msg
    # the service's path: a verified cached copy is still usable while S3 is down
    offline = run_json(env, "registry", "pull", aid, "--task", "facades", "--offline-ok")
    assert sha256_file(Path(offline["path"]) / "model.onnx") == sha256_file(tiny_onnx)
