"""The generator contract at the registry's gates (publish, promote) and registry tools that survive
one corrupt object, on the real SeaweedFS with real ONNX Runtime (issue 11's table, registry rows).

The service's own gate (refusing a set before the swap) is in tests/test_service_trust.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import _bad_models as bad
from conftest import build_tiny_onnx
from registry.contract import check_generator, ort_version
from registry.errors import ContractViolation, IntegrityError
from registry.manifest import Architecture
from registry.runtime import target_size

TASK = "facades"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "pocketgan"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "pocketgan"]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=120)


# (builder, reason the publish refusal must name)
ROWS = {
    "input-1ch": (bad.one_channel_input, "input has 1 channel(s), the manifest declares 3"),
    "input-4ch": (bad.four_channel_input, "input has 4 channel(s), the manifest declares 3"),
    "output-1ch": (bad.one_channel_output, "output has 1 channel(s), the manifest declares 3"),
    "empty": (bad.empty_file, "empty (0 bytes)"),
    "ir-too-new": (bad.ir_version_too_new, "Unsupported model IR version: 99"),
    "identity-0-macs": (bad.identity, "0 MACs"),
    "static-7x7": (bad.static_7x7, "fixed at 7x7"),
    "unbounded-output": (bad.unbounded_output, "outside the declared range"),
}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_publish_refuses_what_is_not_a_generator(registry, tmp_path: Path, row: str) -> None:
    builder, reason = ROWS[row]
    path = builder(tmp_path / row / "model.onnx")
    with pytest.raises(ContractViolation, match=reason.replace("(", r"\(").replace(")", r"\)")):
        registry.publish_model(path, task=TASK, method="teacher")
    assert registry.list(TASK) == []  # nothing uploaded, not even model bytes
    assert registry.store.list(f"{registry.prefix}/artifacts/") == []


def test_cli_publish_exit_7_with_reason(registry_env: dict[str, str], tmp_path: Path) -> None:
    for builder, reason in (ROWS["empty"], ROWS["input-1ch"]):
        r = cli(registry_env, "registry", "publish", str(builder(tmp_path / builder.__name__ / "model.onnx")),
                "--task", TASK, "--method", "teacher")
        assert r.returncode == 7, r.stderr
        assert "not a servable generator" in r.stderr and reason in r.stderr and "Traceback" not in r.stderr


def test_publish_records_the_check_and_min_side(registry, registry_env: dict[str, str], tmp_path: Path) -> None:
    m = registry.publish_model(build_tiny_onnx(tmp_path / "ok" / "model.onnx"), task=TASK, method="teacher").manifest
    c = m.contract
    assert c is not None and c.passed and c.runtime_version == ort_version()
    assert (c.input_nc, c.output_nc, c.size_multiple, c.min_side) == (3, 3, 4, 4)
    assert c.graph_macs == m.architecture.macs > 0
    assert registry.get_manifest(m.artifact_id).contract == c  # stored with the manifest
    r = cli(registry_env, "registry", "show", m.artifact_id)
    assert r.returncode == 0 and f"contract: passed with onnxruntime {ort_version()}" in r.stdout and "min side 4" in r.stdout
    # reflect padding by 4 needs more than 4 pixels a side: the smallest side that runs is 8
    d, manifest = bad.artifact_dir(tmp_path, "reflect", bad.reflect_pad, task=TASK, macs=None)
    assert registry.publish_dir(d).manifest.contract.min_side == 8
    # and a 2x2 upload is sized up to it (never sent to ONNX Runtime at 4x4)
    assert target_size(2, 2, 4, min_side=8) == (8, 8) and target_size(2, 2, 4) == (4, 4)


def test_macs_must_match_the_graph(tmp_path: Path) -> None:
    path = build_tiny_onnx(tmp_path / "m" / "model.onnx")
    graph = check_generator(path, Architecture(family="x")).graph_macs
    check_generator(path, Architecture(family="x", macs=int(graph * 1.15)))  # another transposed-conv convention
    with pytest.raises(ContractViolation, match="inconsistent"):
        check_generator(path, Architecture(family="x", macs=graph * 10))
    with pytest.raises(ContractViolation, match="declares 0 MACs"):
        check_generator(path, Architecture(family="x", macs=0))


def test_promote_rechecks_old_manifests_and_refuses_failures(registry, registry_env: dict[str, str], tmp_path: Path) -> None:
    # an old manifest (no contract record) of a good model: promote re-runs the check and accepts it
    good_dir, good = bad.artifact_dir(tmp_path, "good", lambda p: build_tiny_onnx(p, seed=3), task=TASK, macs=None)
    bad.sneak_in(registry, good_dir, good)
    assert registry.get_manifest(good.artifact_id).contract is None  # still readable
    registry.promote(TASK, "production", [good.artifact_id])
    # an old manifest of a 4-channel model slipped past publish: promote refuses (exit 7), alias unchanged
    four_dir, four = bad.artifact_dir(tmp_path, "four", bad.four_channel_input, task=TASK, macs=None)
    bad.sneak_in(registry, four_dir, four)
    r = cli(registry_env, "registry", "promote", "--task", TASK, "--channel", "production", good.artifact_id, four.artifact_id)
    assert r.returncode == 7 and "input has 4 channel(s)" in r.stderr, r.stderr
    # a 0-byte model under an old manifest
    empty_dir, empty = bad.artifact_dir(tmp_path, "empty", bad.empty_file, task=TASK, macs=1000)
    bad.sneak_in(registry, empty_dir, empty)
    with pytest.raises(ContractViolation, match="empty"):
        registry.promote(TASK, "production", [empty.artifact_id])
    assert registry.read_alias(TASK, "production").alias.artifacts == [good.artifact_id]


def test_promote_refuses_a_different_channel_signature(registry, registry_env: dict[str, str], tmp_path: Path) -> None:
    rgb = registry.publish_model(build_tiny_onnx(tmp_path / "rgb" / "model.onnx", seed=4), task=TASK, method="teacher").manifest
    # honestly declared 1 -> 3: publishable (another task could want it) ...
    r = cli(registry_env, "registry", "publish", str(bad.one_channel_input(tmp_path / "grey" / "model.onnx")),
            "--task", TASK, "--method", "teacher", "--input-nc", "1", "--json")
    assert r.returncode == 0, r.stderr
    grey = json.loads(r.stdout)["artifact_id"]
    # ... but never mixed into an RGB set, nor replacing one
    with pytest.raises(ContractViolation, match="one channel signature"):
        registry.promote(TASK, "production", [rgb.artifact_id, grey])
    registry.promote(TASK, "production", [rgb.artifact_id])
    r = cli(registry_env, "registry", "promote", "--task", TASK, "--channel", "production", grey)
    assert r.returncode == 7 and "serves 3->3 channels" in r.stderr, r.stderr


def test_registry_tools_survive_a_corrupt_manifest(registry, registry_env: dict[str, str], tmp_path: Path) -> None:
    ok = registry.publish_model(build_tiny_onnx(tmp_path / "a" / "model.onnx", seed=5), task=TASK, method="teacher").manifest
    broken = registry.publish_model(build_tiny_onnx(tmp_path / "b" / "model.onnx", seed=6), task=TASK, method="teacher").manifest
    key = registry._manifest_key(TASK, broken.artifact_id)
    registry.store.put(key, b'{"task": "facades", "artifact_id": ')  # truncated JSON
    events = registry.store.list(registry._events_prefix(TASK))
    registry.store.put(events[0], b"not json")

    for args in (("ls",), ("ls", "--method", "teacher"), ("ls", "--task", TASK)):
        r = cli(registry_env, "registry", *args)
        assert r.returncode == 5, (args, r.stderr)
        assert ok.artifact_id in r.stdout and broken.artifact_id in r.stdout and "CORRUPT" in r.stdout
        assert f"corrupt: {TASK}/{broken.artifact_id}" in r.stderr
    r = cli(registry_env, "registry", "ls", "--json")
    assert r.returncode == 5
    listed = json.loads(r.stdout)
    assert {x["artifact_id"] for x in listed} == {ok.artifact_id, broken.artifact_id}
    assert next(x for x in listed if x["artifact_id"] == broken.artifact_id)["corrupt"]
    assert [m.artifact_id for m in registry.list(TASK)] == [ok.artifact_id]  # API: good ones only

    r = cli(registry_env, "registry", "show", broken.artifact_id)
    assert r.returncode == 5 and "corrupt registry object" in r.stderr and "Traceback" not in r.stderr
    r = cli(registry_env, "registry", "history", "--task", TASK)
    assert r.returncode == 5 and "CORRUPT" in r.stdout and "publish" in r.stdout
    with pytest.raises(IntegrityError):
        registry.promote(TASK, "production", [broken.artifact_id])

    r = cli(registry_env, "registry", "retire", broken.artifact_id, "--task", TASK)
    assert r.returncode == 0, r.stderr
    r = cli(registry_env, "registry", "ls")
    assert r.returncode == 0 and broken.artifact_id not in r.stdout and ok.artifact_id in r.stdout
