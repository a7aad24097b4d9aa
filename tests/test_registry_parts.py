"""The registry's parts behind the `Registry` front: where profiles are stored, and an error
hierarchy where a missing bucket is never mistaken for a missing object (real SeaweedFS)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from registry.artifact import MODEL_NAME, build_manifest, write_manifest
from registry.client import Registry
from registry.errors import BucketNotFound, Conflict, MissingObject, NotFound
from registry.manifest import Architecture, HardwareProfile, LatencyMeasurement


def _profile(tag: str, p95: float) -> HardwareProfile:
    return HardwareProfile(hardware_tag=tag, runtime_version="1.20.0", threads=1, measurements=[
        LatencyMeasurement(height=64, width=64, runs=10, p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95, throughput_ips=10.0)])


def _folder_with_profile(tmp_path: Path, onnx: Path, profile: HardwareProfile) -> Path:
    folder = tmp_path / "artifact"
    folder.mkdir()
    shutil.copyfile(onnx, folder / MODEL_NAME)
    manifest = build_manifest(folder, task="facades", method="omgd", architecture=Architecture(family="tiny"),
                              profiles=[profile])
    write_manifest(folder, manifest)
    return folder


def test_a_profile_published_in_the_manifest_is_stored_once(registry: Registry, tiny_onnx: Path, tmp_path: Path) -> None:
    first = _profile("cpu-test", 4.0)
    published = registry.publish_dir(_folder_with_profile(tmp_path, tiny_onnx, first)).manifest
    aid = published.artifact_id
    profiles = registry.layout.profiles_prefix("facades", aid)

    merged = registry.add_profile(aid, first, task="facades")  # what `compress publish` does after publishing
    assert registry.store.list(profiles) == []  # already in manifest.json: not written a second time
    assert merged.profile("cpu-test") == first == registry.get_manifest(aid, "facades").profile("cpu-test")

    newer = _profile("cpu-test", 9.0)  # a re-measurement replaces it, in profiles/<tag>.json
    assert registry.add_profile(aid, newer, task="facades").profile("cpu-test") == newer
    assert registry.store.list(profiles) == [registry.layout.profile_key("facades", aid, "cpu-test")]
    assert registry.get_manifest(aid, "facades").profile("cpu-test") == newer
    assert [m.profile("cpu-test") for m in registry.list(task="facades")] == [newer]


def test_a_missing_bucket_is_never_read_as_a_missing_object(registry: Registry, registry_settings) -> None:
    with pytest.raises(MissingObject, match="never been promoted"):
        registry.read_alias("facades", "production")
    with pytest.raises(Conflict, match="never been promoted"):
        registry.rollback("facades", "production")

    nobucket = Registry(registry_settings.model_copy(update={"registry": "s3://no-such-bucket-here/x"}))
    for call in (lambda: nobucket.rollback("facades", "production"),
                 lambda: nobucket.read_alias("facades", "production"),
                 lambda: nobucket.store.exists(nobucket.layout.alias_key("facades", "production"))):
        with pytest.raises(BucketNotFound) as info:
            call()
        assert not isinstance(info.value, MissingObject) and isinstance(info.value, NotFound)
        assert info.value.exit_code == 4


def test_settings_are_read_when_used_not_at_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from registry.config import RegistrySettings
    from registry.local_s3 import default_data_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))  # after the import: still seen
    assert default_data_dir() == tmp_path / "pocketgan" / "s3"
    monkeypatch.setenv("XDG_DATA_HOME", "")
    assert default_data_dir() == Path.home() / ".local" / "share" / "pocketgan" / "s3"
    for name in ("POCKETGAN_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    assert RegistrySettings().region == "us-east-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    assert RegistrySettings().region == "eu-west-3"
    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    assert RegistrySettings().region == "eu-west-2"
    monkeypatch.setenv("POCKETGAN_REGION", "eu-west-1")
    assert RegistrySettings().region == "eu-west-1"
