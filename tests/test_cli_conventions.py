"""One CLI convention for every `pocketgan` group (README "Command line conventions"), checked through
the real entry point in a subprocess: `--json` prints exactly one JSON document on stdout, a failure is
one `error: …` line on stderr with nothing on stdout, and the exit code comes from the one table
(2 usage, 3 conflict, 4 not found, 5 integrity, 6 S3 unreachable, 7 not a generator,
8 configuration/credentials, 9 execution provider not usable)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compression_jobs.models import resnet_generator

IMAGES = Path(__file__).resolve().parents[1] / "compression_jobs" / "embedded" / "facades" / "test"
HANG_GUARD_S = 300


def pg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pocketgan", *args], env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S, check=False)


def ok_json(*args: str, env: dict[str, str] | None = None):  # noqa: ANN201
    proc = pg(*args, "--json", env=env)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout)  # the whole of stdout is one JSON document


def fails(code: int, *args: str, env: dict[str, str] | None = None, says: str = "") -> str:
    proc = pg(*args, env=env)
    assert proc.returncode == code, f"{args}: exit {proc.returncode}, expected {code}\n{proc.stderr[-2000:]}"
    assert proc.stdout == "", f"{args}: stdout must stay empty on error, got {proc.stdout[:300]!r}"
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), f"{args}: last stderr line {last!r}"
    assert "Error:" not in proc.stderr and "Traceback" not in proc.stderr and "weights_only" not in proc.stderr
    assert says in last, f"{args}: {last!r} does not say {says!r}"
    return last


def _plain_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POCKETGAN_", "AWS_"))}
    return {**env, "BENTOML_DO_NOT_TRACK": "True"}


def test_usage_errors_of_every_group_exit_2_with_error_prefix():
    for group in ("registry", "compress", "s3"):
        fails(2, group, "no-such-command", says="No such command")
    for args in (("export", "--no-such-flag"), ("quantize",), ("macs", "--arch", "vgg"), ("profile", "--runs", "x"),
                 ("serve", "--port", "x"), ("demo", "--images", "0"), ("compress", "run")):
        fails(2, *args)
    fails(2, "serve", "--tasks", "../x", "--json", says="invalid task")
    fails(2, "macs", "--size", "30", "--json", says="multiples of 4")


def test_macs_and_compress_json(tmp_path):
    m = ok_json("macs", "--arch", "mobile-resnet", "--config", "16_16_32_16_32_32_16_16", "--size", "64")
    assert m["macs"] > 0 and m["height"] == 64 and m["arch"] == "mobile-resnet"
    configs = ok_json("compress", "configs")
    assert {"tiny", "demo"} <= set(configs)
    (tmp_path / "run").mkdir()
    status = ok_json("compress", "status", str(tmp_path / "run"))
    assert status["completed"] == {} and status["run_dir"] == str(tmp_path / "run")
    # a config that does not exist: not found (4), one line, with or without --json
    fails(4, "compress", "run", "nope", says="no config file 'nope'")
    fails(4, "compress", "run", "nope", "--json", says="no config file 'nope'")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nteacher: {steps: many}\n")
    fails(2, "compress", "run", str(bad), "--json", says="invalid config")
    # a latency table file that is missing or not a table: refused before any stage runs (nothing made)
    (tmp_path / "table.json").write_text("{not json")
    for table, says in ((tmp_path / "none.json", "none.json"), (tmp_path / "table.json", "not a valid table")):
        fails(2, "compress", "run", "tiny", "--run-dir", str(tmp_path / "never"), "--set", f"search.latency_table={table}",
              "--json", says=says)
    assert not (tmp_path / "never").exists()


def test_export_and_quantize_json_and_non_checkpoints(tmp_path):
    env = _plain_env()
    torch.manual_seed(0)
    torch.save(resnet_generator(ngf=8, n_blocks=2).state_dict(), tmp_path / "teacher.pth")
    out = ok_json("export", "--teacher", str(tmp_path / "teacher.pth"), "--task", "facades-label2photo",
                  "--out", str(tmp_path / "art"), "--exporter", "torchscript", env=env)
    assert out["out"] == str(tmp_path / "art") and out["manifest"]["artifact_id"] == out["artifact_id"]
    assert (tmp_path / "art" / "model.onnx").is_file()
    # files that are no state-dict checkpoint: a clear "not a state-dict checkpoint", never torch's
    # advice to unpickle with weights_only=False
    (tmp_path / "text.pth").write_text("hello")
    torch.save(torch.nn.Identity(), tmp_path / "pickled_module.pth")
    for name in ("text.pth", "pickled_module.pth"):
        fails(2, "export", "--teacher", str(tmp_path / name), "--task", "t", "--out", str(tmp_path / f"o-{name}"), "--json",
              env=env, says="not a state-dict checkpoint")
    fails(2, "export", "--teacher", str(tmp_path / "teacher.pth"), "--task", "t", "--out", str(tmp_path / "art"), "--json",
          env=env, says="already holds an artifact")
    if not IMAGES.is_dir():
        pytest.skip(f"embedded facades images missing at {IMAGES}")
    q = ok_json("quantize", str(tmp_path / "art"), "--calibration-images", str(IMAGES), "--out", str(tmp_path / "q"),
                "--resolution", "32", "--n-calibration", "2", "--n-holdout", "1", env=env)
    assert q["parent"] == out["artifact_id"] and q["manifest"]["architecture"]["precision"] == "int8"
    fails(2, "quantize", str(tmp_path / "q"), "--calibration-images", str(IMAGES), "--out", str(tmp_path / "qq"),
          "--json", env=env, says="not an fp32 artifact")


def test_registry_configuration_and_credentials_have_their_own_exit_code(registry_env, tmp_path):
    assert ok_json("registry", "tasks", env=registry_env) == []
    fails(4, "registry", "show", "0123456789abcdef", "--json", env=registry_env, says="not found")
    unset = {k: v for k, v in registry_env.items() if k != "POCKETGAN_REGISTRY"}
    fails(8, "registry", "ls", "--json", env=unset, says="POCKETGAN_REGISTRY is not set")
    fails(8, "registry", "ls", env={**registry_env, "POCKETGAN_REGISTRY": "http://not-s3"}, says="s3://bucket/prefix")
    no_creds = {k: v for k, v in registry_env.items() if not k.startswith("AWS_")}
    no_creds.update({"AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                     "AWS_EC2_METADATA_DISABLED": "true"})
    fails(8, "registry", "ls", "--json", env=no_creds, says="no AWS credentials")
    fails(8, "registry", "ls", env={**registry_env, "AWS_SECRET_ACCESS_KEY": "wrong"}, says="access denied")
    fails(6, "registry", "ls", env={**registry_env, "POCKETGAN_S3_ENDPOINT": "http://127.0.0.1:9",
                                    "POCKETGAN_MAX_ATTEMPTS": "1"}, says="unreachable")
    fails(4, "profile", "0123456789abcdef", "--dry-run", "--json", env=registry_env, says="not found")


def test_s3_status_json_and_not_running(tmp_path, s3_server):
    fails(4, "s3", "status", "--dir", str(tmp_path / "none"), "--json", says="not running")
    fails(4, "s3", "down", "--dir", str(tmp_path / "none"), "--json", says="no local S3 state")
    from registry.local_s3 import STATE_FILE, write_state

    write_state(s3_server)  # what `pocketgan s3 up` leaves behind for the session's server
    try:
        st = ok_json("s3", "status", "--dir", str(s3_server.data_dir))
        assert st["running"] is True and st["endpoint"] == s3_server.endpoint and st["pid"] == s3_server.pid
        assert "AWS_SECRET_ACCESS_KEY" not in st["env"] and st["env"]["POCKETGAN_S3_ENDPOINT"] == s3_server.endpoint
        shown = ok_json("s3", "status", "--dir", str(s3_server.data_dir), "--show-secret")
        assert shown["env"]["AWS_SECRET_ACCESS_KEY"] == s3_server.secret_key.get_secret_value()
    finally:
        (s3_server.data_dir / STATE_FILE).unlink(missing_ok=True)


def test_serve_json_prints_where_it_serves_first(registry_env):
    proc = subprocess.Popen([sys.executable, "-m", "pocketgan", "serve", "--port", "0", "--json"], env=registry_env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        info = json.loads(line)
        assert info["url"] == "http://127.0.0.1:0" and info["docs"].endswith("/docs.json")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.stdout.read() == ""  # the server's own output went to stderr
