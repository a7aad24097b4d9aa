"""Pure unit tests of the selection rule (service/selection.py)."""

from __future__ import annotations

import pytest

from registry.manifest import LatencyMeasurement
from service.selection import Candidate, NoCandidates, Observed, SelectionRequest, profile_expected_ms, select


def meas(h: int, w: int, p95: float) -> LatencyMeasurement:
    return LatencyMeasurement(height=h, width=w, runs=10, p50_ms=p95 * 0.9, p95_ms=p95, p99_ms=p95 * 1.2, throughput_ips=1.0)


def cand(aid: str, macs: int | None, p95_at_256: float | None, nbytes: int = 1000) -> Candidate:
    return Candidate(
        artifact_id=aid, macs=macs, total_bytes=nbytes,
        measurements=[meas(256, 256, p95_at_256)] if p95_at_256 is not None else [],
    )


def req(budget: float, h: int = 256, w: int = 256) -> SelectionRequest:
    return SelectionRequest(task="t", hardware_tag="cpu-x", budget_ms=budget, height=h, width=w)


SMALL, MID, BIG = cand("small", 1_000, 10.0), cand("mid", 5_000, 30.0), cand("big", 20_000, 90.0)


def test_smallest_eligible_wins_never_a_larger_one() -> None:
    for budget in (10.0, 30.0, 100.0, 60000.0):
        d = select([BIG, MID, SMALL], {}, req(budget))
        assert d.artifact_id == "small" and not d.no_eligible


def test_budget_between_profiles_picks_the_only_fitting_one() -> None:
    fast_big = cand("fast-big", 20_000, 5.0)  # e.g. a better-optimised graph
    assert select([SMALL, fast_big], {}, req(20)).artifact_id == "small"
    d = select([SMALL, fast_big], {}, req(8))
    assert d.artifact_id == "fast-big" and not d.no_eligible


def test_none_eligible_serves_fastest_and_flags() -> None:
    d = select([BIG, MID], {}, req(1.0))
    assert d.no_eligible and d.artifact_id == "mid" and d.expected_ms == pytest.approx(30.0)


def test_scaling_by_pixels_from_nearest_measurement() -> None:
    ms = [meas(128, 128, 4.0), meas(512, 512, 100.0)]
    assert profile_expected_ms(ms, 128, 128) == pytest.approx(4.0)
    assert profile_expected_ms(ms, 256, 256) == pytest.approx(16.0)  # nearest is 128^2 (|65536-16384| < |65536-262144|)
    assert profile_expected_ms(ms, 512, 1024) == pytest.approx(200.0)
    assert profile_expected_ms([], 64, 64) is None
    # a bigger image pushes the small model out of a budget it met at 256x256
    assert select([SMALL, MID], {}, req(15, 512, 512)).no_eligible


def test_unprofiled_never_eligible_even_if_smallest() -> None:
    tiny_unprofiled = cand("tiny", 10, None)
    d = select([tiny_unprofiled, MID], {}, req(100))
    assert d.artifact_id == "mid" and not d.no_eligible
    d = select([tiny_unprofiled, MID], {}, req(1))
    assert d.artifact_id == "mid" and d.no_eligible  # fastest *profiled*, not the unprofiled one


def test_no_profiles_at_all_serves_smallest_flagged() -> None:
    d = select([cand("b", 200, None), cand("a", 100, None, 5)], {}, req(100))
    assert d.artifact_id == "a" and d.no_eligible and d.expected_ms is None


def test_ties_on_macs_broken_by_bytes() -> None:
    a, b = cand("a", 1000, 10.0, nbytes=900), cand("b", 1000, 10.0, nbytes=500)
    assert select([a, b], {}, req(50)).artifact_id == "b"


def test_observed_latency_corrects_the_profile() -> None:
    # this replica sees SMALL at p95 40 ms for 256x256 (profile said 10) while MID runs as profiled:
    # SMALL no longer fits 30 ms ...
    slow = {"small": Observed(count=10, p95_ratio=4.0), "mid": Observed(count=10, p95_ratio=1.0)}
    d = select([SMALL, MID], slow, req(30))
    assert d.artifact_id == "mid" and d.estimates[0].observed_ms == pytest.approx(40.0)
    # ... but still fits 45 ms, where it stays the smallest eligible
    assert select([SMALL, MID], slow, req(45)).artifact_id == "small"
    # observed latency also ranks the no-eligible fallback: MID observed 80 ms is still faster than BIG's 90
    loaded_mid = {"mid": Observed(count=10, p95_ratio=80.0 / 30.0)}
    d = select([BIG, MID], loaded_mid, req(60))
    assert d.no_eligible and d.artifact_id == "mid" and d.expected_ms == pytest.approx(80.0)


def test_unobserved_artifacts_borrow_the_replica_wide_ratio() -> None:
    # a loaded replica: SMALL observed at 3x its profile; MID and BIG never ran here. They are slowed
    # by the same load, so the ranking must not flip to a bigger model that merely lacks observations.
    loaded = {"small": Observed(count=10, p95_ratio=3.0)}
    d = select([SMALL, MID, BIG], loaded, req(5))
    assert d.no_eligible and d.artifact_id == "small"
    by_id = {e.artifact_id: e for e in d.estimates}
    assert by_id["mid"].expected_ms == pytest.approx(90.0) and by_id["big"].expected_ms == pytest.approx(270.0)
    # the replica-wide ratio is the median of the well-observed ratios (robust to one odd model)
    mixed = {"small": Observed(count=10, p95_ratio=1.0), "mid": Observed(count=10, p95_ratio=2.0),
             "x": Observed(count=10, p95_ratio=50.0)}
    assert {e.artifact_id: e for e in select([SMALL, MID, BIG], mixed, req(1000)).estimates}["big"].expected_ms \
        == pytest.approx(180.0)


def test_observations_ignored_until_enough_and_never_lower_the_profile() -> None:
    few = {"small": Observed(count=2, p95_ratio=1e6)}
    assert select([SMALL, MID], few, req(30), min_observations=5).artifact_id == "small"
    fast = {"mid": Observed(count=50, p95_ratio=0.001)}
    d = select([MID], fast, req(20))
    assert d.no_eligible and d.expected_ms == pytest.approx(30.0)  # max(profile, observed)


def test_empty_and_invalid_requests() -> None:
    with pytest.raises(NoCandidates):
        select([], {}, req(10))
    with pytest.raises(ValueError):
        SelectionRequest(task="t", hardware_tag="x", budget_ms=-1, height=1, width=1)


def test_observed_ratio_carries_across_sizes() -> None:
    # SMALL observed 2x slower than profiled: at 512x512 the profile says 40 ms, corrected 80 ms
    slow = {"small": Observed(count=10, p95_ratio=2.0)}
    d = select([SMALL], slow, req(100, 512, 512))
    assert d.expected_ms == pytest.approx(80.0) and not d.no_eligible
    assert select([SMALL], slow, req(70, 512, 512)).no_eligible


def test_observations_ewma_and_p95() -> None:
    from service.pool import Observations

    o = Observations(alpha=0.5)
    o.add("a", 10.0, None)  # unprofiled: ignored
    assert o.get("a").count == 0
    for actual in (20.0, 20.0, 20.0):
        o.add("a", actual, 10.0)
    assert o.get("a").count == 3 and o.get("a").p95_ratio == pytest.approx(2.0)
    o.add("a", 40.0, 10.0)  # a slow one raises both the mean and the spread
    assert o.ewma("a") == pytest.approx(3.0) and o.get("a").p95_ratio == pytest.approx(3.0 + 2 * 1.0)


# -- issue 11: policy, a correction that cannot be poisoned, re-probing, circuit breaker ------------

class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_best_quality_policy_highest_fidelity_within_budget() -> None:
    lo = Candidate(artifact_id="lo", macs=1_000, measurements=[meas(256, 256, 10.0)], fidelity=0.4)
    hi = Candidate(artifact_id="hi", macs=5_000, measurements=[meas(256, 256, 30.0)], fidelity=0.8)
    teacher = Candidate(artifact_id="teacher", macs=20_000, measurements=[meas(256, 256, 90.0)], fidelity=1.0)
    unknown = Candidate(artifact_id="unknown", macs=500, measurements=[meas(256, 256, 5.0)], fidelity=None)
    every = [lo, hi, teacher, unknown]
    assert select(every, {}, req(100), policy="best-quality").artifact_id == "teacher"
    assert select(every, {}, req(50), policy="best-quality").artifact_id == "hi"
    assert select(every, {}, req(12), policy="best-quality").artifact_id == "lo"
    assert select(every, {}, req(6), policy="best-quality").artifact_id == "unknown"  # the only one within budget
    d = select(every, {}, req(100))
    assert d.artifact_id == "unknown" and d.policy == "smallest"
    with pytest.raises(ValueError, match="unknown selection policy"):
        select(every, {}, req(100), policy="fastest")  # type: ignore[arg-type]


def test_samples_are_clamped_tiny_inputs_ignored_and_the_ratio_decays() -> None:
    from service.pool import Observations

    clock = Clock()
    o = Observations(alpha=0.5, min_pixels=64 * 64, clamp=4.0, half_life_s=60.0, clock=clock)
    assert not o.add("a", 50.0, 0.01, pixels=4 * 4)  # a 2x2 upload: fixed costs vs a profile scaled to 16 px
    assert o.get("a").count == 0
    for _ in range(3):
        assert o.add("a", 5000.0, 10.0, pixels=128 * 128)  # ratio 500, clamped to 4
    assert o.get("a").p95_ratio == pytest.approx(4.0)
    clock.t += 120.0  # two half-lives unobserved: 1 + (4 - 1) / 4
    assert o.ewma("a") == pytest.approx(1.75) and o.get("a").p95_ratio == pytest.approx(1.75)
    clock.t += 3600.0
    assert o.get("a").p95_ratio == pytest.approx(1.0, abs=1e-9)


def _pool(**overrides):  # noqa: ANN202
    from service.metrics import build_metrics
    from service.pool import ModelPool, ModelSet
    from service.settings import ServiceSettings

    settings = ServiceSettings(tasks=["t"], hardware_tag="cpu-x", device_classes={"desktop": 30.0}, **overrides)
    clock = Clock()
    pool = ModelPool(settings, build_metrics(settings.budget_buckets_s()), "cpu-x", clock=clock)
    mset = ModelSet("t", 1, ("small", "mid"), {}, "registry", None, (SMALL, MID))  # type: ignore[arg-type]
    return pool, mset, clock


def test_an_artifact_excluded_by_its_own_ratio_is_selected_again() -> None:
    """The issue's "never selected again": a slow spell pushes SMALL's ratio to the clamp; it must come back."""
    pool, mset, clock = _pool(reprobe_every=5, min_observations=2, ratio_half_life_s=60.0)
    for _ in range(5):
        pool.observe(mset, "small", 256, 256, 10.0 * 8)  # 8x its profile (clamped to 4x)
        pool.observe(mset, "mid", 256, 256, 30.0 * 0.9)  # mid as profiled
    picks = [pool.decide(mset, "t", "desktop", 30.0, 256, 256) for _ in range(5)]
    assert [d.artifact_id for d in picks] == ["mid"] * 4 + ["small"]  # 1 request in 5 re-probes it
    assert picks[-1].probe and not any(d.probe for d in picks[:-1])
    assert picks[0].estimates[0].excluded_by_ratio
    pool.observe(mset, "small", 256, 256, 8.0, probe=True)  # the re-probe finds it fast again
    assert [pool.decide(mset, "t", "desktop", 30.0, 256, 256).artifact_id for _ in range(3)] == ["small"] * 3
    # and with no request at all, the ratio decays back: same slow spell, then 3 minutes of quiet
    pool, mset, clock = _pool(reprobe_every=1000, min_observations=2, ratio_half_life_s=60.0)
    for _ in range(5):
        pool.observe(mset, "small", 256, 256, 80.0)
        pool.observe(mset, "mid", 256, 256, 27.0)
    assert pool.decide(mset, "t", "desktop", 30.0, 256, 256).artifact_id == "mid"
    clock.t += 180.0
    assert pool.decide(mset, "t", "desktop", 30.0, 256, 256).artifact_id == "small"


def test_a_genuinely_slow_replica_still_shifts_down() -> None:
    pool, mset, _ = _pool(reprobe_every=10, min_observations=2, device_class_policies={"desktop": "best-quality"})
    mset = type(mset)("t", 1, ("small", "mid"), {}, "registry", None,
                      (SMALL.model_copy(update={"fidelity": 0.4}), MID.model_copy(update={"fidelity": 0.8})))
    assert pool.decide(mset, "t", "desktop", 35.0, 256, 256).artifact_id == "mid"  # best quality within 35 ms
    picks = []
    for _ in range(30):  # this replica runs everything 2x slower than profiled, every time
        d = pool.decide(mset, "t", "desktop", 35.0, 256, 256)
        picks.append(d.artifact_id)
        pool.observe(mset, d.artifact_id, 256, 256, 2.0 * (10.0 if d.artifact_id == "small" else 30.0))
    assert picks[-20:].count("small") >= 18  # shifted down; mid only re-probed 1 request in 10


def test_circuit_breaker_ejects_cools_down_and_half_opens() -> None:
    from service.fallback import CircuitBreaker

    clock, changes = Clock(), []
    b = CircuitBreaker(3, 30.0, clock=clock, on_change=lambda t, a, e: changes.append((a, e)))
    assert not b.failure("t", "x") and not b.failure("t", "x")
    b.success("t", "x")  # a success resets the count
    assert not b.failure("t", "x") and not b.failure("t", "x") and b.failure("t", "x")
    assert b.ejected("t", "x") and not b.ejected("t", "y") and changes == [("x", True)]
    clock.t += 29.0
    assert b.ejected("t", "x")
    clock.t += 2.0
    assert not b.ejected("t", "x") and changes[-1] == ("x", False)
    assert b.failure("t", "x") and b.ejected("t", "x")  # half-open: one failure ejects again
