"""Evolutionary search over the supernet's channel configs, under a MACs or latency budget.

Sub-networks are scored on the held-out split straight from the shared supernet weights (no
retraining, as in GAN Compression / once-for-all). Feasibility is a MACs budget, or a latency
budget on a hardware tag. Latency is predicted by a :class:`LatencyPredictor`: the tag's per-block
lookup table from the registry (:class:`compression_jobs.latency_table.TableLatencyModel`, any
device that ran ``pocketgan profile-ops``), or, for this machine without a table, a linear model
``ms = a + b·MACs`` fitted to a few configs exported to ONNX and measured here. The chosen
configs are measured again after fine-tuning, and those measurements are what gets published.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np
import torch

from compression_jobs.counting import count_macs
from compression_jobs.data import ImageSet
from compression_jobs.gan_compression.evaluate import fidelity
from compression_jobs.models.mobile import ChannelConfig
from compression_jobs.models.supernet import SuperMobileResnetGenerator

if TYPE_CHECKING:  # config -> coevolution.config -> coevolution.search imports this module (macs_at)
    from compression_jobs.gan_compression.config import SearchConfig

_COUNT_RES = 32  # MACs scale exactly with H*W for sides divisible by 4, so count small and scale


def macs_at(model: torch.nn.Module, resolution: int, forward_kwargs: dict | None = None) -> int:
    """Exact MACs at `resolution` (a multiple of 4), counted at 32x32 and scaled by area."""
    if resolution % 4:
        raise ValueError(f"resolution must be a multiple of 4, got {resolution}")
    small = count_macs(model, _COUNT_RES, forward_kwargs=forward_kwargs)
    return small * (resolution * resolution) // (_COUNT_RES * _COUNT_RES)


@dataclass
class LatencyModel:
    """ms ≈ intercept + slope·MACs, least squares over measured (MACs, p50 ms) points."""

    intercept: float
    slope: float
    points: list[tuple[int, float]] = field(default_factory=list)
    hardware_tag: str = ""

    @classmethod
    def fit(cls, points: list[tuple[int, float]], hardware_tag: str) -> "LatencyModel":
        if len(points) < 2:
            raise ValueError("need at least 2 measured points to fit a latency model")
        x = np.array([p[0] for p in points], dtype=np.float64)
        y = np.array([p[1] for p in points], dtype=np.float64)
        slope, intercept = np.polyfit(x, y, 1)
        if slope < 0:  # noise on tiny nets: fall back to a proportional model through the mean
            slope, intercept = 0.0, float(y.mean())
        return cls(float(intercept), float(slope), points, hardware_tag)

    def predict(self, macs: int) -> float:
        return self.intercept + self.slope * macs

    def predict_config(self, config: ChannelConfig | str, macs: int) -> float:  # noqa: ARG002 - MACs say it all
        return self.predict(macs)

    def describe(self) -> dict:
        return {"kind": "linear-macs", **asdict(self)}


class LatencyPredictor(Protocol):
    """What the search needs from a latency model (linear in MACs, or a per-block lookup table)."""

    @property
    def hardware_tag(self) -> str: ...

    def predict_config(self, config: ChannelConfig | str, macs: int) -> float: ...

    def describe(self) -> dict: ...


@dataclass
class Candidate:
    config: str
    macs: int
    ssim_to_teacher: float | None = None
    psnr_to_teacher: float | None = None
    predicted_latency_ms: float | None = None
    feasible: bool = True

    def quality(self, metric: str) -> float:
        v = self.ssim_to_teacher if metric == "ssim" else self.psnr_to_teacher
        return float("-inf") if v is None else v


@dataclass
class SearchResult:
    budget_macs: int | None
    budget_latency_ms: float | None
    hardware_tag: str | None
    metric: str
    evaluated: list[Candidate]
    pareto: list[str]
    chosen: list[str]
    latency_model: dict | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        return d


def pareto_front(cands: list[Candidate], metric: str) -> list[Candidate]:
    """Non-dominated feasible candidates: fewer MACs (and lower predicted latency) vs higher quality."""
    feas = [c for c in cands if c.feasible]

    def dominates(a: Candidate, b: Candidate) -> bool:
        la = a.predicted_latency_ms if a.predicted_latency_ms is not None else 0.0
        lb = b.predicted_latency_ms if b.predicted_latency_ms is not None else 0.0
        no_worse = a.macs <= b.macs and a.quality(metric) >= b.quality(metric) and la <= lb
        better = a.macs < b.macs or a.quality(metric) > b.quality(metric) or la < lb
        return no_worse and better

    front = [c for c in feas if not any(dominates(o, c) for o in feas if o is not c)]
    return sorted(front, key=lambda c: c.macs)


def choose_points(front: list[Candidate], metric: str, k: int) -> list[Candidate]:
    """The best-quality point plus up to k-1 others spread evenly over the front's MACs range."""
    if not front:
        return []
    best = max(front, key=lambda c: c.quality(metric))
    chosen = [best]
    others = [c for c in front if c is not best]
    if k > 1 and others:
        idx = np.linspace(0, len(others) - 1, num=min(k - 1, len(others)))
        for i in sorted(set(int(round(v)) for v in idx)):
            chosen.append(others[i])
    return sorted(chosen, key=lambda c: c.macs)


def evolutionary_search(
    supernet: SuperMobileResnetGenerator,
    test: ImageSet,
    teacher_out: torch.Tensor,
    cfg: SearchConfig,
    *,
    resolution: int,
    budget_macs: int | None,
    latency: LatencyPredictor | None,
    seed: int,
    batch_size: int = 8,
    progress_cb: Callable[[int], None] | None = None,
    device: str = "cpu",
) -> SearchResult:
    """Score sub-networks on held-out images; keep the best `cfg.parents`, mutate/cross them over.

    `cfg` gives the search's own settings (population, generations, parents, mutation, metric,
    max_publish, latency budget); `budget_macs` is the MACs budget already resolved against the teacher.
    """
    population, generations, parents = cfg.population, cfg.generations, cfg.parents
    mutate_prob, metric, max_publish = cfg.mutate_prob, cfg.metric, cfg.max_publish
    budget_latency_ms = cfg.latency_budget_ms
    space = supernet.space
    rng = random.Random(seed)
    cache: dict[str, Candidate] = {}
    dev = torch.device(device)
    supernet.eval()

    def evaluate(cfg: ChannelConfig) -> Candidate:
        key = str(cfg)
        if key in cache:
            return cache[key]
        macs = macs_at(supernet.cpu(), resolution, {"config": cfg})
        supernet.to(dev)
        cand = Candidate(key, macs)
        if latency is not None:
            cand.predicted_latency_ms = round(latency.predict_config(cfg, macs), 4)
        cand.feasible = (budget_macs is None or macs <= budget_macs) and (
            budget_latency_ms is None or cand.predicted_latency_ms is None or cand.predicted_latency_ms <= budget_latency_ms
        )
        if cand.feasible:
            m = fidelity(lambda x: supernet(x.to(dev), cfg).cpu(), test, teacher_out, batch_size)
            cand.ssim_to_teacher, cand.psnr_to_teacher = m["ssim_to_teacher"], m["psnr_to_teacher"]
        cache[key] = cand
        if progress_cb:
            progress_cb(1)
        return cand

    smallest = evaluate(space.smallest())
    if not smallest.feasible:
        what = f"{budget_macs:,} MACs" if budget_macs is not None else f"{budget_latency_ms} ms"
        raise ValueError(
            f"budget {what} is below the smallest sub-network {smallest.config} "
            f"({smallest.macs:,} MACs, predicted {smallest.predicted_latency_ms} ms)"
        )

    def random_feasible(tries: int = 50) -> Candidate | None:
        for _ in range(tries):
            c = evaluate(space.sample(rng))
            if c.feasible:
                return c
        return None

    pop = [smallest]
    while len(pop) < population:
        c = random_feasible()
        if c is None:
            break
        if c not in pop:
            pop.append(c)
        elif len(cache) >= space.size:
            break
    for _gen in range(generations):
        pop.sort(key=lambda c: c.quality(metric), reverse=True)
        elite = pop[:parents]
        children: list[Candidate] = []
        attempts = 0
        while len(children) < population - len(elite) and attempts < population * 20:
            attempts += 1
            if rng.random() < 0.5 and len(elite) >= 2:
                a, b = rng.sample(elite, 2)
                cfg = space.crossover(ChannelConfig.parse(a.config), ChannelConfig.parse(b.config), rng)
            else:
                cfg = space.mutate(rng.choice(elite).config, rng, mutate_prob)
            c = evaluate(cfg)
            if c.feasible and c not in children and c not in elite:
                children.append(c)
        pop = elite + children
    evaluated = list(cache.values())
    front = pareto_front(evaluated, metric)
    chosen = choose_points(front, metric, max_publish)
    return SearchResult(
        budget_macs=budget_macs,
        budget_latency_ms=budget_latency_ms,
        hardware_tag=latency.hardware_tag if latency else None,
        metric=metric,
        evaluated=sorted(evaluated, key=lambda c: c.macs),
        pareto=[c.config for c in front],
        chosen=[c.config for c in chosen],
        latency_model=latency.describe() if latency else None,
    )
