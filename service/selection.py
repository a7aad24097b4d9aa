"""Per-request model selection: a pure function of candidates, observations and the request.

Expected p95 latency of a candidate at H x W:

1. profile-based: the measurement of the candidate's profile for the hardware tag whose pixel
   count is nearest to H*W, scaled linearly by pixel ratio (`p95 * H*W / (h_m*w_m)`);
2. observation-based (server-side only): once the service has at least `min_observations`
   requests for that artifact, profile-based times its observed p95 ratio
   inference time / profile p95 at that tensor size (`service.pool.Observations`: an EWMA of
   clamped samples, images under a minimum pixel count ignored, decaying toward 1 while the
   artifact is not observed, so no sequence of requests can exclude a model for good). A ratio,
   not ms per pixel, so the correction carries across image sizes and the profile's size
   scaling is kept. An artifact with fewer observations borrows the replica-wide ratio (the median of the
   well-observed artifacts' ratios): load slows every model on a replica, and comparing a
   corrected estimate with an uncorrected one would make a rarely-used big model look faster
   than a busy small one;
3. expected = max(profile-based, observation-based) = profile-based * max(1, ratio). Taking the
   max is deliberately conservative: a loaded or slower-than-profiled replica shifts to
   smaller / faster models, while a replica faster than its profile never promises more than
   the profile measured.

Eligible = has a profile for the tag and expected <= budget. Choice, by the device class's
policy: `smallest` (default) = the smallest eligible (MACs, then bytes, then id for
determinism); `best-quality` = the eligible one with the highest recorded fidelity (a teacher
counts as 1.0, others their SSIM to the teacher; unknown fidelity ranks last), ties to the
smallest. None eligible: the fastest expected, flagged `no_eligible`. Candidates without a
profile for the tag are never eligible; if NO candidate has one, the smallest is served and flagged.

Re-probing: an artifact whose profile fits the budget but whose own observed ratio pushes it
over is `excluded_by_ratio`; ids passed in `probe` are judged on the profile alone for this one
request (the pool passes one now and then, bounded), so an excluded artifact is observed again.
"""

from __future__ import annotations

import statistics
from typing import Literal

from pydantic import BaseModel, Field

from registry.manifest import LatencyMeasurement, nearest_measurement


class Candidate(BaseModel):
    """What selection needs to know about one promoted artifact."""

    artifact_id: str
    macs: int | None = None
    total_bytes: int = 0
    measurements: list[LatencyMeasurement] = Field(
        default_factory=list, description="profile measurements for the hardware tag in question (empty = unprofiled)"
    )
    fidelity: float | None = Field(default=None, description="recorded fidelity for `best-quality` (1.0 = the teacher)")


Policy = Literal["smallest", "best-quality"]
POLICIES: tuple[str, ...] = ("smallest", "best-quality")


class Observed(BaseModel):
    """Latency the service measured for one artifact, relative to its profile's expectation."""

    count: int = 0
    p95_ratio: float | None = Field(default=None, description="p95 of actual / profile-expected (1 = as profiled)")


class SelectionRequest(BaseModel):
    task: str
    hardware_tag: str
    budget_ms: float = Field(gt=0)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    batch: int = Field(default=1, ge=1)


class Estimate(BaseModel):
    artifact_id: str
    expected_ms: float | None
    profile_ms: float | None
    observed_ms: float | None
    eligible: bool
    reason: str
    excluded_by_ratio: bool = Field(
        default=False, description="the profile fits the budget, its own observed ratio does not (a re-probe candidate)"
    )


class Decision(BaseModel):
    artifact_id: str
    expected_ms: float | None
    budget_ms: float
    no_eligible: bool
    reasons: list[str]
    estimates: list[Estimate]
    policy: Policy = "smallest"
    probe: bool = Field(default=False, description="chosen as a re-probe of an artifact its own ratio excluded")


class NoCandidates(ValueError):
    """Selection was asked to choose from an empty set."""


def profile_expected_ms(measurements: list[LatencyMeasurement], height: int, width: int, batch: int = 1) -> float | None:
    """p95 of the nearest-in-pixels measurement, scaled linearly by pixel ratio (None if unprofiled)."""
    if not measurements:
        return None
    m = nearest_measurement(measurements, height, width, batch)
    return m.p95_ms * height * width / float(m.height * m.width)


def _size_key(c: Candidate) -> tuple[float, int, str]:
    return (float(c.macs) if c.macs is not None else float("inf"), c.total_bytes, c.artifact_id)


def _quality_key(c: Candidate) -> tuple[float, float, int, str]:
    """best-quality order: highest fidelity first (unknown last), then smallest."""
    return (-c.fidelity if c.fidelity is not None else float("inf"), *_size_key(c))


def _replica_ratio(observed: dict[str, Observed], min_observations: int) -> float | None:
    """Median actual/profile ratio over the artifacts observed often enough (None if none are)."""
    ratios = [o.p95_ratio for o in observed.values() if o.p95_ratio is not None and o.count >= min_observations]
    return statistics.median(ratios) if ratios else None


def select(
    candidates: list[Candidate],
    observed: dict[str, Observed],
    request: SelectionRequest,
    *,
    min_observations: int = 5,
    policy: Policy = "smallest",
    probe: frozenset[str] | set[str] = frozenset(),
) -> Decision:
    """Choose the artifact for one request (see the module docstring for the rule)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; known: {', '.join(POLICIES)}")
    if not candidates:
        raise NoCandidates(f"no promoted artifacts for task {request.task!r}")
    estimates: dict[str, Estimate] = {}
    replica_ratio = _replica_ratio(observed, min_observations)
    for c in candidates:
        prof = profile_expected_ms(c.measurements, request.height, request.width, request.batch)
        obs = observed.get(c.artifact_id)
        own = obs is not None and obs.p95_ratio is not None and obs.count >= min_observations
        ratio = obs.p95_ratio if own else replica_ratio
        if c.artifact_id in probe:
            ratio = None  # judged on its profile alone for this request
        obs_ms = prof * ratio if prof is not None and ratio is not None else None
        if prof is None:
            estimates[c.artifact_id] = Estimate(
                artifact_id=c.artifact_id, expected_ms=None, profile_ms=None, observed_ms=obs_ms,
                eligible=False, reason=f"no profile for {request.hardware_tag}",
            )
            continue
        expected = max(prof, obs_ms) if obs_ms is not None else prof
        ok = expected <= request.budget_ms
        estimates[c.artifact_id] = Estimate(
            artifact_id=c.artifact_id, expected_ms=expected, profile_ms=prof, observed_ms=obs_ms, eligible=ok,
            reason=f"expected {expected:.1f} ms {'<=' if ok else '>'} budget {request.budget_ms:g} ms"
            + (" (re-probe: profile only)" if c.artifact_id in probe else ""),
            excluded_by_ratio=own and not ok and prof <= request.budget_ms,
        )
    ordered = sorted(candidates, key=_size_key)
    eligible = [c for c in ordered if estimates[c.artifact_id].eligible]
    profiled = [c for c in ordered if estimates[c.artifact_id].expected_ms is not None]
    if eligible and policy == "best-quality":
        chosen, no_eligible = min(eligible, key=_quality_key), False
        why = f"best-quality: highest recorded fidelity of {len(eligible)}/{len(candidates)} eligible"
    elif eligible:
        chosen, no_eligible = eligible[0], False
        why = f"smallest eligible of {len(eligible)}/{len(candidates)} (MACs, then bytes)"
    elif profiled:
        chosen = min(profiled, key=lambda c: (estimates[c.artifact_id].expected_ms, _size_key(c)))
        no_eligible = True
        why = f"none within {request.budget_ms:g} ms: fastest expected"
    else:
        chosen, no_eligible = ordered[0], True
        why = f"no candidate profiled on {request.hardware_tag}: smallest"
    est = estimates[chosen.artifact_id]
    return Decision(
        artifact_id=chosen.artifact_id,
        expected_ms=est.expected_ms,
        budget_ms=request.budget_ms,
        no_eligible=no_eligible,
        reasons=[why, f"{chosen.artifact_id}: {est.reason}"],
        estimates=[estimates[c.artifact_id] for c in ordered],
        policy=policy,
        probe=chosen.artifact_id in probe and not no_eligible,
    )
