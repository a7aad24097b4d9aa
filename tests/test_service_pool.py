"""The model pool in-process against the real local S3: first load, offline start from the
verified cache, no cache -> not ready, corrupt cache -> refused, registry back -> relabelled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import build_tiny_onnx
from registry.artifact import build_manifest, write_manifest
from registry.manifest import Architecture
from service.metrics import build_metrics
from service.pool import ModelPool
from service.settings import ServiceSettings

TASK = "facades-label2photo"


def _value(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def _publish(registry, root: Path, width: int, seed: int) -> str:
    d = root / f"a{width}-{seed}"
    build_tiny_onnx(d / "model.onnx", seed=seed, width=width)
    m = build_manifest(d, task=TASK, method="teacher", architecture=Architecture(family="tiny-conv"))  # MACs: from the graph at publish
    write_manifest(d, m)
    registry.publish_dir(d)
    return m.artifact_id


def _pool(registry, cache_root: Path) -> ModelPool:
    settings = ServiceSettings(tasks=[TASK], hardware_tag="test-cpu", warmup_size=16, intra_op_threads=1)
    metrics = build_metrics(settings.budget_buckets_s())
    metrics.init_labels(settings.tasks, list(settings.device_classes))
    return ModelPool(settings, metrics, "test-cpu", registry_factory=lambda: registry, cache_root=cache_root)


def _down(registry):
    from registry.client import Registry

    s = registry.settings.model_copy(update={"s3_endpoint": "http://127.0.0.1:9", "max_attempts": 1, "connect_timeout_s": 0.5})
    return Registry(s)


def test_offline_start_from_verified_cache_then_back_online(registry, tmp_path: Path) -> None:
    a, b = _publish(registry, tmp_path, 8, 1), _publish(registry, tmp_path, 12, 2)
    registry.promote(TASK, "production", [a, b], actor="pytest")
    cache = tmp_path / "svc-cache"

    online = _pool(registry, cache)
    assert not online.ready()
    asyncio.run(online.refresh(TASK))
    assert online.ready() and online.snapshot(TASK).source == "registry"
    assert online.snapshot(TASK).artifact_ids == (a, b)

    offline = _pool(_down(registry), cache)
    errors = _value("pocketgan_registry_poll_errors_total", task=TASK)
    asyncio.run(offline.refresh(TASK))
    snap = offline.snapshot(TASK)
    assert offline.ready() and snap.source == "cache" and snap.artifact_ids == (a, b)
    assert _value("pocketgan_registry_poll_errors_total", task=TASK) == errors + 1
    assert _value("pocketgan_serving_from_cache", task=TASK) == 1.0
    out = snap.artifacts[a].generator.run(__import__("numpy").zeros((1, 3, 16, 16), "float32"))
    assert out.shape == (1, 3, 16, 16)

    # the registry is back: same set -> relabelled "registry", no reload (same generator objects)
    offline._registry = registry
    asyncio.run(offline.refresh(TASK))
    assert offline.snapshot(TASK).source == "registry"
    assert offline.snapshot(TASK).artifacts[a].generator is snap.artifacts[a].generator
    assert _value("pocketgan_serving_from_cache", task=TASK) == 0.0


def test_registry_down_without_cache_is_not_ready(registry, tmp_path: Path) -> None:
    pool = _pool(_down(registry), tmp_path / "empty-cache")
    asyncio.run(pool.refresh(TASK))
    assert not pool.ready() and pool.snapshot(TASK) is None
    assert "poll" in (pool.states[TASK].last_error or "")


def test_corrupt_cache_is_refused(registry, tmp_path: Path) -> None:
    a = _publish(registry, tmp_path, 8, 3)
    registry.promote(TASK, "production", [a], actor="pytest")
    cache = tmp_path / "svc-cache"
    online = _pool(registry, cache)
    asyncio.run(online.refresh(TASK))
    model = online.snapshot(TASK).artifacts[a].directory / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")  # same size, different bytes
    failures = _value("pocketgan_model_swap_failures_total", task=TASK, reason="integrity")
    offline = _pool(_down(registry), cache)
    asyncio.run(offline.refresh(TASK))
    assert not offline.ready()
    assert _value("pocketgan_model_swap_failures_total", task=TASK, reason="integrity") == failures + 1


def test_alias_to_missing_artifact_keeps_old_set(registry, tmp_path: Path) -> None:
    a = _publish(registry, tmp_path, 8, 4)
    registry.promote(TASK, "production", [a], actor="pytest")
    pool = _pool(registry, tmp_path / "c")
    asyncio.run(pool.refresh(TASK))
    # point the alias at an id that was never published, behind the registry's back
    snap = registry.read_alias(TASK, "production")
    bad = snap.alias.model_copy(update={"revision": snap.alias.revision + 1, "artifacts": ["0123456789abcdef"]})
    registry.store.put(registry.layout.alias_key(TASK, "production"), bad.model_dump_json().encode())
    before = _value("pocketgan_model_swap_failures_total", task=TASK, reason="not_found")
    asyncio.run(pool.refresh(TASK))
    assert pool.snapshot(TASK).artifact_ids == (a,)
    assert _value("pocketgan_model_swap_failures_total", task=TASK, reason="not_found") == before + 1
    asyncio.run(pool.refresh(TASK))  # the same broken alias is not retried (counted once)
    assert _value("pocketgan_model_swap_failures_total", task=TASK, reason="not_found") == before + 1


@pytest.mark.parametrize("bad", [{"tasks": []}, {"device_classes": {"x": -1}}, {"min_budget_ms": 10, "max_budget_ms": 5},
                                 {"tasks": ["../etc"]}, {"device_classes": {"desktop": 1e9}}])
def test_settings_validation(bad: dict) -> None:
    with pytest.raises(ValueError):
        ServiceSettings(**bad)


def test_settings_from_env_and_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "svc.yaml"
    cfg.write_text("tasks: [a-task]\ndevice_classes: {watch: 900}\npoll_interval_s: 3\n")
    monkeypatch.setenv("POCKETGAN_SERVICE_CONFIG", str(cfg))
    monkeypatch.setenv("POCKETGAN_SERVICE_POLL_INTERVAL_S", "2")
    s = ServiceSettings()
    assert s.tasks == ["a-task"] and s.device_classes == {"watch": 900} and s.poll_interval_s == 2.0
    assert 0.9 in s.budget_buckets_s()
