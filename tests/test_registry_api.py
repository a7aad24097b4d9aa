"""Registry Python API against a real SeaweedFS server (fixtures in conftest.py)."""

from __future__ import annotations

import threading
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

from registry.artifact import build_manifest, sha256_file, write_manifest
from registry.client import Registry
from registry.config import RegistrySettings
from registry.errors import ConfigurationError, Conflict, CredentialsError, IntegrityError, InvalidInput, NotFound, RegistryUnreachable
from registry.manifest import Architecture, HardwareProfile, LatencyMeasurement, Quality
from registry.onnx_stats import onnx_stats


def _profile(tag: str, p95: float = 5.0) -> HardwareProfile:
    return HardwareProfile(
        hardware_tag=tag,
        runtime_version="1.20.0",
        threads=1,
        measurements=[
            LatencyMeasurement(height=64, width=64, runs=10, p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95 * 1.5, throughput_ips=100.0)
        ],
    )


def _publish(registry: Registry, make_tiny_onnx, seed: int, task: str = "facades", method: str = "omgd") -> str:
    return registry.publish_model(make_tiny_onnx(seed=seed), task=task, method=method).manifest.artifact_id


def test_publish_list_show_pull_round_trip(registry: Registry, tiny_onnx: Path, registry_settings) -> None:
    result = registry.publish_model(tiny_onnx, task="facades", method="teacher", parent="scratch", job={"epochs": 1})
    m = result.manifest
    assert result.created
    assert m.artifact_id == sha256_file(tiny_onnx)[:16]
    assert m.files[0].bytes == tiny_onnx.stat().st_size
    # MACs/params from the graph: conv 3->8 and 8->3, 3x3, at 256x256
    assert m.architecture.macs == 2 * 8 * 3 * 9 * 256 * 256
    assert m.architecture.params == 8 * 3 * 9 + 8 + 3 * 8 * 9 + 3
    assert m.architecture.onnx_opset == 17

    listed = registry.list()
    assert [x.artifact_id for x in listed] == [m.artifact_id]
    assert registry.list(task="facades", method="teacher")[0].artifact_id == m.artifact_id
    assert registry.list(method="omgd") == []
    assert registry.list(task="other") == []
    assert registry.tasks() == ["facades"]

    shown = registry.get_manifest(m.artifact_id)
    assert shown.task == "facades" and shown.parent == "scratch" and shown.job == {"epochs": 1}
    assert registry.get_manifest(m.artifact_id, task="facades") == shown

    path = registry.pull(m.artifact_id)
    assert path == registry_settings.cache_dir / "artifacts" / "facades" / m.artifact_id
    assert (path / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert (path / "manifest.json").is_file()
    # second pull re-verifies the cached copy and returns it
    assert registry.pull(m.artifact_id) == path
    assert registry.cached(m.artifact_id) == path


def test_republish_identical_content_is_a_noop(registry: Registry, tiny_onnx: Path) -> None:
    first = registry.publish_model(tiny_onnx, task="facades", method="teacher")
    again = registry.publish_model(tiny_onnx, task="facades", method="teacher")
    assert first.created and not again.created
    assert again.manifest.artifact_id == first.manifest.artifact_id
    assert len(registry.list()) == 1
    # the same id under another task is a separate artifact
    other = registry.publish_model(tiny_onnx, task="edges2shoes", method="teacher")
    assert other.created and other.manifest.artifact_id == first.manifest.artifact_id
    with pytest.raises(InvalidInput, match="several tasks"):
        registry.get_manifest(first.manifest.artifact_id)


def test_publish_dir_with_extra_files_and_conflicting_republish(registry: Registry, tiny_onnx: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    (art / "notes.txt").write_text("first")
    manifest = build_manifest(
        art, task="facades", method="gan-compression", architecture=Architecture(family="mobile-resnet"),
        extra_files=["notes.txt"], quality=Quality(dataset="facades", split="test", psnr_to_teacher=30.0),
        profiles=[_profile("cpu-test")],
    )
    write_manifest(art, manifest)
    res = registry.publish_dir(art)
    assert res.created
    got = registry.get_manifest(manifest.artifact_id, "facades")
    assert {f.path for f in got.files} == {"model.onnx", "notes.txt"}
    assert got.profile("cpu-test") is not None  # profiles in the manifest are published with it
    assert got.quality.psnr_to_teacher == 30.0
    assert [m.artifact_id for m in registry.list(hardware_tag="cpu-test")] == [manifest.artifact_id]

    # same model.onnx (same id) but a different extra file: immutable -> refused
    (art / "notes.txt").write_text("second")
    write_manifest(art, build_manifest(art, task="facades", method="gan-compression",
                                       architecture=Architecture(family="mobile-resnet"), extra_files=["notes.txt"]))
    with pytest.raises(IntegrityError, match="immutable"):
        registry.publish_dir(art)

    # files may not shadow the registry's own metadata keys
    reserved = tmp_path / "reserved"
    (reserved / "profiles").mkdir(parents=True)
    (reserved / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    (reserved / "profiles" / "cpu.json").write_text("{}")
    write_manifest(reserved, build_manifest(reserved, task="other", method="teacher", architecture=Architecture(family="x"),
                                            extra_files=["profiles/cpu.json"]))
    with pytest.raises(InvalidInput, match="reserved"):
        registry.publish_dir(reserved)


def test_publish_dir_rehashes_local_files(registry: Registry, tiny_onnx: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    write_manifest(art, build_manifest(art, task="facades", method="teacher", architecture=Architecture(family="x")))
    data = bytearray((art / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (art / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        registry.publish_dir(art)
    assert registry.list() == []


def test_manifest_last_half_upload_is_invisible(registry: Registry, s3_server, tiny_onnx: Path) -> None:
    visible = registry.publish_model(tiny_onnx, task="facades", method="teacher").manifest.artifact_id
    # a half-finished upload: model bytes present, no manifest
    half_id = "0123456789abcdef"
    s3_server.boto3_client().put_object(
        Bucket=registry.bucket, Key=f"{registry.prefix}/artifacts/facades/{half_id}/model.onnx", Body=b"partial"
    )
    assert [m.artifact_id for m in registry.list()] == [visible]
    with pytest.raises(NotFound):
        registry.get_manifest(half_id, "facades")
    with pytest.raises(NotFound):
        registry.get_manifest(half_id)
    with pytest.raises(NotFound):
        registry.pull(half_id, "facades")


def test_tampered_object_fails_verify_and_pull_and_leaves_cache_clean(
    registry: Registry, s3_server, tiny_onnx: Path, registry_settings
) -> None:
    aid = registry.publish_model(tiny_onnx, task="facades", method="teacher").manifest.artifact_id
    assert registry.verify(aid).artifact_id == aid
    key = f"{registry.prefix}/artifacts/facades/{aid}/model.onnx"
    s3_server.boto3_client().put_object(Bucket=registry.bucket, Key=key, Body=b"not the model" * 100)
    with pytest.raises(IntegrityError, match=key):
        registry.verify(aid)
    with pytest.raises(IntegrityError):
        registry.pull(aid)
    cache_task = registry_settings.cache_dir / "artifacts" / "facades"
    leftovers = list(cache_task.iterdir()) if cache_task.exists() else []
    assert leftovers == []
    # same length, different bytes: caught by sha256, not only by size
    s3_server.boto3_client().put_object(Bucket=registry.bucket, Key=key, Body=b"\0" * tiny_onnx.stat().st_size)
    with pytest.raises(IntegrityError, match="sha256"):
        registry.verify(aid)
    # promotion of a corrupt artifact is refused
    with pytest.raises(IntegrityError):
        registry.promote("facades", "production", [aid])
    with pytest.raises(NotFound):
        registry.read_alias("facades", "production")


def test_corrupt_cache_entry_is_replaced(registry: Registry, tiny_onnx: Path) -> None:
    aid = registry.publish_model(tiny_onnx, task="facades", method="teacher").manifest.artifact_id
    path = registry.pull(aid)
    (path / "model.onnx").write_bytes(b"rotten")
    assert registry.cached(aid) is None  # the bad entry is removed, not returned
    assert not path.exists()
    path = registry.pull(aid)
    (path / "model.onnx").write_bytes(b"rotten again")
    assert registry.pull(aid) == path
    assert sha256_file(path / "model.onnx") == sha256_file(tiny_onnx)


def test_pull_offline_uses_only_a_verified_cache(registry_settings, tiny_onnx: Path) -> None:
    online = Registry(registry_settings)
    aid = online.publish_model(tiny_onnx, task="facades", method="teacher").manifest.artifact_id
    online.pull(aid, "facades")
    down = registry_settings.model_copy(update={"s3_endpoint": "http://127.0.0.1:9", "max_attempts": 1})
    offline = Registry(down)
    with pytest.raises(RegistryUnreachable):
        offline.pull(aid, "facades")
    path = offline.pull(aid, "facades", allow_offline=True)
    assert sha256_file(path / "model.onnx") == sha256_file(tiny_onnx)
    (path / "model.onnx").write_bytes(b"corrupt")
    with pytest.raises(RegistryUnreachable):
        offline.pull(aid, "facades", allow_offline=True)


def test_concurrent_promotes_exactly_one_wins(registry: Registry, registry_settings, make_tiny_onnx) -> None:
    ids = [_publish(registry, make_tiny_onnx, seed) for seed in range(9)]
    base = registry.promote("facades", "production", [ids[0]])
    assert base.revision == 1
    barrier = threading.Barrier(8)
    wins: list[int] = []
    conflicts: list[Conflict] = []
    others: list[BaseException] = []

    class Synced(Registry):
        """Holds every thread right after it read the alias, so all 8 writes use the same ETag."""

        waited = False

        def _current(self, task, channel):  # noqa: ANN001, ANN202
            snap = super()._current(task, channel)
            if not self.waited:
                self.waited = True
                barrier.wait(30)
            return snap

    def attempt(i: int) -> None:
        reg = Synced(registry_settings)  # one client per "operator"
        try:
            wins.append(reg.promote("facades", "production", [ids[i + 1]], expect_revision=1, actor=f"op{i}").revision)
        except Conflict as exc:
            conflicts.append(exc)
        except BaseException as exc:  # noqa: BLE001
            others.append(exc)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert others == []
    assert wins == [2]
    assert len(conflicts) == 7
    assert all(c.current_revision == 2 for c in conflicts)
    assert all("lost a race; current revision is 2" in str(c) for c in conflicts)
    alias = registry.read_alias("facades", "production").alias
    assert alias.revision == 2 and alias.history == [[ids[0]]]
    promotes = [e for e in registry.history("facades", "production") if e.action == "promote"]
    assert len(promotes) == 2  # losers wrote no events


def test_expect_revision_mismatch_is_a_conflict(registry: Registry, make_tiny_onnx) -> None:
    a = _publish(registry, make_tiny_onnx, 1)
    with pytest.raises(Conflict, match="revision 0") as info:
        registry.promote("facades", "staging", [a], expect_revision=3)
    assert info.value.current_revision == 0
    assert registry.promote("facades", "staging", [a], expect_revision=0).revision == 1
    with pytest.raises(Conflict, match="revision 1"):
        registry.promote("facades", "staging", [a], expect_revision=0)


def test_promote_rollback_history(registry: Registry, make_tiny_onnx) -> None:
    a, b, c = (_publish(registry, make_tiny_onnx, s) for s in (1, 2, 3))
    r1 = registry.promote("facades", "production", [a, b], actor="alice", reason="first")
    r2 = registry.promote("facades", "production", [c], actor="bob", expect_revision=1)
    assert (r1.revision, r2.revision) == (1, 2)
    back = registry.rollback("facades", "production", actor="carol", reason="c is bad")
    assert back.artifacts == [a, b] and back.revision == 3 and back.history == []
    snap = registry.read_alias("facades", "production")
    assert snap.alias.artifacts == [a, b]
    with pytest.raises(Conflict, match="nothing to roll back"):
        registry.rollback("facades", "production")
    with pytest.raises(Conflict, match="never been promoted"):
        registry.rollback("facades", "canary")

    events = registry.history("facades", "production")
    assert [(e.action, e.actor) for e in events] == [("promote", "alice"), ("promote", "bob"), ("rollback", "carol")]
    assert events[1].from_set == [a, b] and events[1].to_set == [c]
    assert events[2].from_set == [c] and events[2].to_set == [a, b]
    assert (events[2].from_revision, events[2].to_revision) == (2, 3)
    assert events[2].reason == "c is bad"
    assert all(x.at <= y.at for x, y in zip(events, events[1:]))
    assert {e.action for e in registry.history("facades")} == {"publish", "promote", "rollback"}


def test_poll_alias_is_conditional(registry: Registry, make_tiny_onnx) -> None:
    a, b = _publish(registry, make_tiny_onnx, 1), _publish(registry, make_tiny_onnx, 2)
    with pytest.raises(NotFound):
        registry.poll_alias("facades", "production", None)
    registry.promote("facades", "production", [a])
    snap = registry.poll_alias("facades", "production", None)
    assert snap is not None and snap.alias.artifacts == [a]
    assert registry.poll_alias("facades", "production", snap.etag) is None
    registry.promote("facades", "production", [b])
    changed = registry.poll_alias("facades", "production", snap.etag)
    assert changed is not None and changed.alias.artifacts == [b] and changed.etag != snap.etag


def test_retire(registry: Registry, make_tiny_onnx) -> None:
    a, b = _publish(registry, make_tiny_onnx, 1), _publish(registry, make_tiny_onnx, 2)
    registry.promote("facades", "production", [a])
    with pytest.raises(Conflict, match="promoted in facades/production"):
        registry.retire(a)
    registry.retire(b, actor="dave")
    assert [m.artifact_id for m in registry.list()] == [a]
    assert {m.artifact_id for m in registry.list(include_retired=True)} == {a, b}
    assert registry.is_retired(b) and not registry.is_retired(a)
    assert registry.get_manifest(b).artifact_id == b  # still readable
    with pytest.raises(Conflict, match="retired"):
        registry.promote("facades", "production", [a, b])
    registry.retire(b)  # idempotent
    assert [e.action for e in registry.history("facades") if e.action == "retire"] == ["retire"]


def test_add_profile_and_hardware_filter(registry: Registry, make_tiny_onnx) -> None:
    a, b = _publish(registry, make_tiny_onnx, 1), _publish(registry, make_tiny_onnx, 2)
    merged = registry.add_profile(a, _profile("cpu-x86_64-avx2", 4.0))
    assert merged.profile("cpu-x86_64-avx2").measurements[0].p95_ms == 4.0
    assert [m.artifact_id for m in registry.list(hardware_tag="cpu-x86_64-avx2")] == [a]
    assert registry.list(hardware_tag="cuda-sm90") == []
    # a re-measurement replaces the earlier profile for that tag
    registry.add_profile(a, _profile("cpu-x86_64-avx2", 6.0))
    got = registry.get_manifest(a)
    assert len(got.profiles) == 1 and got.profile("cpu-x86_64-avx2").measurements[0].p95_ms == 6.0
    assert registry.get_manifest(b).profiles == []
    with pytest.raises(NotFound):
        registry.add_profile("fedcba9876543210", _profile("cpu"), task="facades")


def test_presigned_url_downloads_the_model(registry: Registry, tiny_onnx: Path) -> None:
    aid = registry.publish_model(tiny_onnx, task="facades", method="teacher").manifest.artifact_id
    url = registry.presign(aid, expires_s=60)
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - local test server
        assert resp.read() == tiny_onnx.read_bytes()
    with pytest.raises(NotFound):
        registry.presign(aid, path="weights.bin")


@pytest.mark.parametrize("bad", ["..", "a/b", "Facades", "x" * 65, "", "-lead", "a..b"])
def test_invalid_names_are_rejected_before_any_request(registry: Registry, tiny_onnx: Path, bad: str) -> None:
    with pytest.raises(InvalidInput):
        registry.publish_model(tiny_onnx, task=bad, method="teacher")
    with pytest.raises(InvalidInput):
        registry.read_alias("facades", bad)
    with pytest.raises(InvalidInput):
        registry.list(task=bad)
    with pytest.raises(InvalidInput):
        registry.get_manifest(bad)
    with pytest.raises(InvalidInput):
        registry.history(bad)


def test_unreachable_and_missing_bucket(registry_settings, s3_server) -> None:
    down = Registry(registry_settings.model_copy(update={"s3_endpoint": "http://127.0.0.1:9"}))
    with pytest.raises(RegistryUnreachable, match="127.0.0.1:9"):
        down.list()
    nobucket = Registry(registry_settings.model_copy(update={"registry": "s3://no-such-bucket-here/x"}))
    for call in (nobucket.list, lambda: nobucket.get_manifest("0123456789abcdef", "facades"),
                 lambda: nobucket.read_alias("facades", "production")):
        with pytest.raises(NotFound, match="bucket no-such-bucket-here does not exist"):
            call()
    wrong_key = Registry(registry_settings.model_copy(update={"secret_access_key": "wrong"}))
    with pytest.raises(CredentialsError, match="access denied") as denied:
        wrong_key.list()
    assert denied.value.exit_code == 8 and isinstance(denied.value, RegistryUnreachable)  # the service's offline path


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("POCKETGAN_REGISTRY", "s3://my-bucket/team/models")
    monkeypatch.setenv("POCKETGAN_S3_ENDPOINT", "http://127.0.0.1:1234/")
    monkeypatch.setenv("POCKETGAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    s = RegistrySettings.from_env()
    assert (s.bucket, s.prefix, s.s3_endpoint, s.region, s.cache_dir) == (
        "my-bucket", "team/models", "http://127.0.0.1:1234", "eu-west-1", tmp_path
    )
    monkeypatch.setenv("POCKETGAN_REGISTRY", "s3://my-bucket/../etc")
    with pytest.raises(ConfigurationError):  # configuration, exit 8 (not a usage error)
        RegistrySettings.from_env()
    monkeypatch.delenv("POCKETGAN_REGISTRY")
    with pytest.raises(ConfigurationError, match="pocketgan s3 up"):
        Registry(RegistrySettings.from_env())


def test_onnx_stats_convtranspose_and_gemm(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w_ct = numpy_helper.from_array(np.ones((4, 2, 4, 4), np.float32), "w_ct")  # in=4, out=2
    w_fc = numpy_helper.from_array(np.ones((2 * 32 * 32, 10), np.float32), "w_fc")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w_ct"], ["y"], kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["y", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w_fc"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], initializer=[w_ct, w_fc, shape],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    stats = onnx_stats(path, resolution=16, transposed="exact")
    # ConvTranspose: input elements (4*16*16) x out/groups (2) x 4x4; Gemm: 10 outputs x 2048 inner
    assert stats.macs == 4 * 16 * 16 * 2 * 16 + 10 * 2 * 32 * 32
    assert stats.params == 4 * 2 * 16 + 2048 * 10 + 2
    # published (torchprofile) convention: output elements (2*32*32) x in/groups (4) x 4x4
    published = onnx_stats(path, resolution=16)  # the default: same convention as compression_jobs
    assert published.macs == 2 * 32 * 32 * 4 * 16 + 10 * 2 * 32 * 32
    assert published.macs_convention != stats.macs_convention
    assert stats.input_nc == 4
    with pytest.raises(InvalidInput):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"not onnx at all")
        onnx_stats(bad)


def test_utc_event_keys_sort_by_time(registry: Registry, make_tiny_onnx, s3_server) -> None:
    a = _publish(registry, make_tiny_onnx, 1)
    registry.promote("facades", "production", [a])
    keys = registry.store.list(f"{registry.prefix}/events/facades/")
    assert len(keys) == 2 and keys == sorted(keys)
    assert all(k.rsplit("/", 1)[1][:4] == str(datetime.now(timezone.utc).year) for k in keys)


def test_silent_server_times_out_as_unreachable(registry_settings) -> None:
    """A server that accepts connections but never answers (a fault SeaweedFS cannot produce):
    bounded read timeout x attempts, then RegistryUnreachable instead of a hang."""
    import socket

    held: list[socket.socket] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop_flag = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop_flag.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        port = listener.getsockname()[1]
        silent = Registry(registry_settings.model_copy(update={
            "s3_endpoint": f"http://127.0.0.1:{port}", "read_timeout_s": 0.5, "max_attempts": 2,
        }))
        with pytest.raises(RegistryUnreachable, match=f"127.0.0.1:{port}.*2 attempt"):
            silent.list()
        assert len(held) >= 2  # it really retried (standard mode), on a new connection
    finally:
        stop_flag.set()
        t.join(5)
        for s in held:
            s.close()
        listener.close()
