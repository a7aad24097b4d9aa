"""A binary genetic algorithm as in Co-Evolutionary Compression (Shu et al., ICCV 2019).

Roulette-wheel selection on fitness = 1 / loss (lower loss → proportionally more offspring),
single-point crossover, per-bit flip mutation and elitism (the best codes survive unchanged).
The population is re-scored every generation, because in co-evolution the loss of a code
depends on the other population's current best; with a fixed loss, elitism makes the best
loss non-increasing.
"""

from __future__ import annotations

from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

LossFn = Callable[[torch.Tensor], float]
"""Loss of one code (bool tensor); lower is better, must be >= 0."""


class GAParams(BaseModel):
    """Population size and operator rates."""

    model_config = ConfigDict(extra="forbid")

    population: int = Field(default=16, ge=2)
    elite: int = Field(default=2, ge=0, description="best codes copied unchanged into the next generation")
    crossover_prob: float = Field(default=0.9, ge=0, le=1)
    mutate_prob: float = Field(default=0.01, ge=0, le=1, description="per-bit flip probability")
    init_keep: tuple[float, float] = Field(default=(0.5, 1.0), description="initial codes keep a fraction drawn from this range")
    include_full: bool = Field(default=True, description="seed the population with the all-ones (unpruned) code")


class Population:
    """One evolving population of binary codes (deterministic for a given seed)."""

    def __init__(self, n_bits: int, params: GAParams, seed: int,
                 repair: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.n_bits, self.params = n_bits, params
        self.gen = torch.Generator().manual_seed(seed)
        self.repair = repair or (lambda c: c)
        codes = []
        if params.include_full:
            codes.append(torch.ones(n_bits, dtype=torch.bool))
        lo, hi = params.init_keep
        while len(codes) < params.population:
            keep = lo + (hi - lo) * torch.rand((), generator=self.gen).item()
            codes.append(torch.rand(n_bits, generator=self.gen) < keep)
        self.codes = [self.repair(c) for c in codes]
        self.losses: list[float] | None = None
        self.history: list[float] = []  # best loss after each scoring
        self.generation = 0

    # ------------------------------------------------------------------ scoring

    def score(self, loss_fn: LossFn) -> float:
        """Score every code; records and returns the best loss of this population."""
        self.losses = [float(loss_fn(c)) for c in self.codes]
        if any(loss < 0 for loss in self.losses):
            raise ValueError("losses must be >= 0 (fitness is 1/loss)")
        best = min(self.losses)
        self.history.append(best)
        return best

    @property
    def best(self) -> tuple[torch.Tensor, float]:
        """The best code of the last scoring and its loss."""
        if self.losses is None:
            raise RuntimeError("score the population first")
        i = min(range(len(self.codes)), key=lambda k: (self.losses[k], k))
        return self.codes[i], self.losses[i]

    # ------------------------------------------------------------------ operators

    def _roulette(self, n: int) -> list[int]:
        fitness = torch.tensor([1.0 / (loss + 1e-12) for loss in self.losses], dtype=torch.float64)
        return torch.multinomial(fitness / fitness.sum(), n, replacement=True, generator=self.gen).tolist()

    def _crossover(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n_bits < 2 or torch.rand((), generator=self.gen).item() >= self.params.crossover_prob:
            return a.clone(), b.clone()
        cut = int(torch.randint(1, self.n_bits, (), generator=self.gen))
        return torch.cat([a[:cut], b[cut:]]), torch.cat([b[:cut], a[cut:]])

    def _mutate(self, c: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(self.n_bits, generator=self.gen) < self.params.mutate_prob
        return c ^ flip

    def breed(self) -> None:
        """Next generation: elites unchanged, the rest from roulette-selected parents."""
        if self.losses is None:
            raise RuntimeError("score the population before breeding")
        order = sorted(range(len(self.codes)), key=lambda k: (self.losses[k], k))
        nxt = [self.codes[i].clone() for i in order[: self.params.elite]]
        while len(nxt) < self.params.population:
            i, j = self._roulette(2)
            for child in self._crossover(self.codes[i], self.codes[j]):
                if len(nxt) < self.params.population:
                    nxt.append(self.repair(self._mutate(child)))
        self.codes, self.losses = nxt, None
        self.generation += 1


def evolve(n_bits: int, loss_fn: LossFn, generations: int, params: GAParams, seed: int = 0,
           repair: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Population:
    """Single-population GA with a fixed loss (the paired case, and the tests' toy problems)."""
    pop = Population(n_bits, params, seed, repair)
    pop.score(loss_fn)
    for _ in range(generations):
        pop.breed()
        pop.score(loss_fn)
    return pop
