"""Op latency tables: block decomposition, exact fast-graph rewrites, measurement, registry storage,
and a latency-budget search for a device the test does not run on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from compression_jobs.data import DataConfig, ImageSet
from compression_jobs.export import export_onnx
from compression_jobs.gan_compression.evaluate import outputs
from compression_jobs.gan_compression.config import SearchConfig
from compression_jobs.gan_compression.search import evolutionary_search, macs_at
from compression_jobs.latency_table import (
    TableLatencyModel,
    block_keys,
    config_macs,
    fetch_table,
    pick_fastest,
    pick_most_macs,
    profile_ops,
    random_configs,
    segment,
    space_keys,
)
from compression_jobs.models.fast import SpaceToDepthConv2d, SubPixelConvTranspose2d, fast_inference_copy
from compression_jobs.models.mobile import ChannelConfig, MobileResnetGenerator
from compression_jobs.models.resnet import ResnetGenerator
from compression_jobs.models.supernet import ChannelSpace, supernet
from registry.errors import InvalidInput, NotFound
from registry.optables import OpTable, get_optable, list_optables, optable_key, put_optable

TINY_MAX = "16_32_64_64_64_64_32_16"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _space() -> ChannelSpace:
    return ChannelSpace.from_multipliers(TINY_MAX, (0.5, 1.0))


def _synthetic_table(tag: str, space: ChannelSpace, n_blocks: int, *, resolution: int = 256,
                     fast: bool = True) -> OpTable:
    """A hand-made table for a pretend device whose full-resolution head is slow at width 16."""
    entries = {}
    for k in space_keys(space, n_blocks):
        kind, _, w = k.partition("/")
        widths = [int(v) for v in w.split("-")]
        entries[k] = 50.0 if k == "head/16" else 0.01 * widths[0] * widths[-1] / 8
    return OpTable(hardware_tag=tag, family="mobile-resnet", resolution=resolution, threads=4,
                   runtime_version="1.0", execution_provider="NNAPIExecutionProvider", runs=5,
                   export={"fast": fast}, design={"n_blocks": n_blocks, "input_nc": 3, "output_nc": 3},
                   entries=entries, scale=1.25)


def test_block_keys_cover_every_config_and_segments_rebuild_the_student():
    space = _space()
    keys = set(space_keys(space, 3))
    for cfg in space.all_configs():
        assert set(block_keys(cfg, 3)) <= keys
    cfg = ChannelConfig.parse("8_32_64_32_64_32_16_8")
    assert len(block_keys(cfg, 9)) == 6 + 9
    # the segments, chained, are the student's layers in order and shapes chain at 32x32
    student = MobileResnetGenerator(cfg, n_blocks=3)
    parts = [segment(k) for k in block_keys(cfg, 3)]
    chained = [type(m).__name__ for seg, _, _ in parts for m in seg]
    assert chained == [type(m).__name__ for m in student.model]
    x = torch.rand(1, 3, 32, 32)
    for seg, cin, down in parts:
        assert x.shape[1] == cin and x.shape[-1] == 32 // down
        x = seg(x)
    assert tuple(x.shape) == (1, 3, 32, 32)
    assert config_macs(cfg, 3, 64) == macs_at(student, 64)  # MACs add up over blocks, too
    with pytest.raises(ValueError, match="not a block key"):
        segment("bogus/1-2")


def test_fast_graph_rewrites_are_exact(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(2, 8, 12, 20)
    ct = nn.ConvTranspose2d(8, 5, 3, 2, 1, output_padding=1)
    assert torch.allclose(SubPixelConvTranspose2d(ct)(x), ct(x), atol=1e-5)
    conv = nn.Conv2d(8, 3, 7)
    assert torch.allclose(SpaceToDepthConv2d(conv)(x), conv(x), atol=1e-5)
    with pytest.raises(ValueError):
        SubPixelConvTranspose2d(nn.ConvTranspose2d(8, 5, 4, 2, 1))
    student = MobileResnetGenerator("8_16_32_16_32_32_16_8", n_blocks=3).eval()
    both = fast_inference_copy(student, upsample=True)
    assert isinstance(both.model[-2], SpaceToDepthConv2d)
    assert sum(isinstance(m, SubPixelConvTranspose2d) for m in both.modules()) == 2
    y = torch.rand(1, 3, 36, 28) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(both(y), student(y), atol=1e-5)
    # teacher-shaped ResNet: the head is rewritten too, exactly
    teacher = ResnetGenerator(ngf=8, n_blocks=2).eval()
    with torch.no_grad():
        assert torch.allclose(fast_inference_copy(teacher)(y), teacher(y), atol=1e-5)
    info = export_onnx(student, tmp_path / "s.onnx", resolution=32, fast_graph=True)
    assert info.fast_graph and max(info.parity_max_abs_diff.values()) <= info.parity_atol
    ops = {n.op_type for n in onnx.load(str(tmp_path / "s.onnx")).graph.node}
    assert "DepthToSpace" in ops


def test_profile_ops_measures_a_tiny_space_and_predicts_from_it():
    space = ChannelSpace.from_multipliers("16_16_16_16_16_16_16_16", (0.5, 1.0))
    table = profile_ops(space, hardware_tag="cpu-test", n_blocks=2, resolution=16, threads=1, runs=2, warmup=1,
                        calibrate=2)
    assert set(table.entries) == set(space_keys(space, 2))
    assert all(ms >= 0 for ms in table.entries.values()) and sum(table.entries.values()) > 0
    assert [c["config"] for c in table.calibration] == [str(space.smallest()), str(space.largest())]
    assert table.scale > 0 and table.export["fast"] is True and table.resolution == 16
    model = TableLatencyModel.for_space(table, space, 2, resolution=16, fast_graph=True)
    cfg = space.largest()
    assert model.predict_config(cfg) == pytest.approx(
        table.intercept_ms + table.scale * sum(table.entries[k] for k in block_keys(cfg, 2)))
    with pytest.raises(ValueError, match="measured at 16x16"):
        TableLatencyModel.for_space(table, space, 2, resolution=32)
    with pytest.raises(ValueError, match="fast_graph"):
        TableLatencyModel.for_space(table, space, 2, fast_graph=False)
    with pytest.raises(ValueError, match="lacks"):
        TableLatencyModel.for_space(table, ChannelSpace.from_multipliers("16_16_32_16_16_16_16_16", (0.5, 1.0)), 2)


def test_calibration_fit():
    from compression_jobs.latency_table import fit_calibration

    assert fit_calibration([(10.0, 13.0), (20.0, 23.0), (40.0, 43.0)]) == pytest.approx((3.0, 1.0))
    assert fit_calibration([(10.0, 12.0), (20.0, 24.0)]) == pytest.approx((0.0, 1.2))  # two points: a ratio
    assert fit_calibration([(10.0, 30.0), (20.0, 20.0), (40.0, 10.0)])[0] == 0.0  # no positive line: a ratio
    assert fit_calibration([]) == (0.0, 1.0)


def test_optables_round_trip_through_the_registry(registry, s3_server):
    space = _space()
    assert list_optables(registry) == []
    with pytest.raises(NotFound, match="profile-ops --hardware-tag phone-x"):
        get_optable(registry, "phone-x")
    table = _synthetic_table("phone-x", space, 3)
    key = put_optable(registry, table)
    assert key == optable_key(registry, "phone-x") and key.endswith("optables/phone-x.json")
    assert get_optable(registry, "phone-x").entries == table.entries
    assert list_optables(registry) == ["phone-x"]
    with pytest.raises(InvalidInput):
        get_optable(registry, "../etc")
    # a corrupt or foreign object under the key is refused with a clear error, not used
    registry.store.put(optable_key(registry, "broken"), b"{not json")
    with pytest.raises(InvalidInput, match="not a valid table"):
        get_optable(registry, "broken")
    registry.store.put(optable_key(registry, "other"), table.model_dump_json().encode())
    with pytest.raises(InvalidInput, match="is for hardware tag 'phone-x'"):
        get_optable(registry, "other")


def test_search_under_a_latency_budget_for_another_device(registry):
    """The table of a device this machine is not: the search obeys it, not MACs."""
    cfg = DataConfig(root="embedded:facades", load_size=36, crop_size=32, max_train=2, max_test=4)
    test = ImageSet(cfg, "test")
    torch.manual_seed(0)
    teacher = ResnetGenerator(ngf=8, n_blocks=3).eval()
    sn = supernet(ngf=16, n_blocks=3, multipliers=(0.5, 1.0))
    put_optable(registry, _synthetic_table("phone-x", sn.space, 3))
    table = fetch_table(registry, "phone-x", required=True)
    lut = TableLatencyModel.for_space(table, sn.space, 3, resolution=256, fast_graph=True)
    budget = 40.0  # below 1.25 * 50 ms: every config whose head is 16 wide is too slow on phone-x
    cfg = SearchConfig(latency_budget_ms=budget, hardware_tag="phone-x", population=6, generations=2, parents=2,
                       mutate_prob=0.5, max_publish=3)
    res = evolutionary_search(sn, test, outputs(teacher, test, 4), cfg, resolution=256, budget_macs=None, latency=lut,
                              seed=0, batch_size=4)
    assert res.hardware_tag == "phone-x" and res.latency_model["kind"] == "op-table"
    assert res.chosen
    by = {c.config: c for c in res.evaluated}
    for c in res.evaluated:
        assert c.predicted_latency_ms == pytest.approx(lut.predict_config(c.config), abs=1e-3)
        assert c.feasible == (c.predicted_latency_ms <= budget)
        assert c.feasible == (ChannelConfig.parse(c.config)[7] == 8)
    assert all(by[c].feasible for c in res.chosen)
    assert any(not c.feasible for c in res.evaluated)
    # the table, not MACs, decides: a bigger network fits the budget where a smaller one does not
    big, small = "16_32_64_64_64_64_32_8", "8_16_32_32_32_32_16_16"
    assert macs_at(sn, 256, {"config": big}) > macs_at(sn, 256, {"config": small})
    assert lut.predict_config(big) <= budget < lut.predict_config(small)
    assert by[res.chosen[0]].macs == macs_at(sn.extract(res.chosen[0]), 256)


def test_table_picks_as_many_macs_in_less_time_and_more_macs_in_the_same_time():
    """pick_fastest / pick_most_macs on a pretend device whose 16-wide head costs 50 ms: MACs alone
    would keep the slow head, the table trades it for trunk width."""
    space = _space()
    lut = TableLatencyModel.for_space(_synthetic_table("phone-x", space, 3), space, 3, resolution=256)
    configs = list(space.all_configs())
    uniform = ChannelConfig.parse(TINY_MAX)  # the largest config: head 16 wide, slow on phone-x
    macs = {c: config_macs(c, 3, 256) for c in configs}
    lo = int(0.8 * macs[uniform])
    fast = pick_fastest(lut, configs, min_macs=lo, max_macs=macs[uniform])
    window = [c for c in configs if lo <= macs[c] <= macs[uniform]]
    assert fast in window and fast[7] == 8 and uniform[7] == 16
    assert lut.predict_config(fast) == min(lut.predict_config(c) for c in window) < lut.predict_config(uniform)
    assert pick_fastest(lut, configs, min_macs=macs[uniform] + 1, max_macs=macs[uniform] + 2) is None
    # more capacity at no more predicted time than a small config with the slow head
    small = ChannelConfig.parse("8_16_32_32_32_32_16_16")
    roomy = pick_most_macs(lut, configs, max_ms=lut.predict_config(small))
    assert macs[roomy] == max(macs[c] for c in configs if lut.predict_config(c) <= lut.predict_config(small))
    assert macs[roomy] > macs[small] and roomy[7] == 8
    assert pick_most_macs(lut, configs, max_ms=-1.0) is None
    # seeded candidates: the same list for the same seed, every draw from the space
    drawn = random_configs(space, 50, seed=3)
    assert drawn == random_configs(space, 50, seed=3) and all(space.contains(c) for c in drawn)


def test_missing_table_for_another_device_is_a_clear_error(registry):
    with pytest.raises(ValueError, match=r"'phone-y'.*pocketgan profile-ops --hardware-tag phone-y"):
        fetch_table(registry, "phone-y", required=True)
    assert fetch_table(registry, "phone-y", required=False) is None  # this machine: measure here instead


def test_profile_ops_cli_writes_the_table(registry, registry_env):
    cmd = [sys.executable, "-m", "pocketgan", "profile-ops", "--hardware-tag", "edge-box", "--max-config",
           "16_16_16_16_16_16_16_16", "--multipliers", "0.5,1", "--n-blocks", "1", "--resolution", "16",
           "--runs", "1", "--warmup", "0", "--calibrate", "1", "--threads", "1", "--json"]
    env = {**registry_env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["written"].endswith("optables/edge-box.json")
    stored = get_optable(registry, "edge-box")
    assert stored.entries == out["entries"] and stored.threads == 1
    bad = subprocess.run(cmd[:-1] + ["--resolution", "18"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "multiple of 4" in bad.stderr
    bad = subprocess.run(cmd[:5] + ["Bad/Tag", "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid hardware tag" in bad.stderr
