"""Co-evolutionary channel search: one population of codes per generator, scored with the teacher's D.

Loss of a code p for generator G (lower is better; the GA's fitness is 1 / loss):

    loss(p) = λ_dis · L_DisA(p) + λ_rec · L_rec(p) + γ · params(Ĝ_p) / params(G)

- L_DisA, the discriminator-aware loss (Shu et al. 2019, eq. 3): mean squared difference between
  the trained discriminator's outputs on the teacher's output and on the pruned generator's
  output, D(G(x)) vs D(Ĝ_p(x)) (conditional D sees x|y for pix2pix).
- L_rec: unpaired (two populations, A→B and B→A, evolved alternately): cycle consistency
  |Ĝ_other(Ĝ_p(x)) - x|_1 through the other population's current best; paired (one population):
  reconstruction of the teacher's output |Ĝ_p(x) - G(x)|_1 (the pix2pix pair replaces the cycle).
- γ · remaining parameter fraction pushes towards smaller generators.
- with a MACs budget (the job's ``search`` budget, so every method of a comparison gets the same
  one): + budget_penalty · max(0, MACs / budget - 1) (steep; the stage reports whether the best fits).
  MACs at the reference side come from ``macs_at`` (counted small and scaled by area: exact, every
  feature map of this generator scales with the input side).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from compression_jobs.coevolution.genetic import GAParams, Population
from compression_jobs.coevolution.prune import ChannelGroups, prune_generator
from compression_jobs.counting import count_params
from compression_jobs.gan_compression.search import macs_at


class FitnessWeights(BaseModel):
    lambda_dis: float = 1.0
    lambda_rec: float = 10.0
    gamma: float = 1.0
    budget_macs: int | None = None
    budget_penalty: float = 10.0
    macs_resolution: int = 256


class LossTerms(BaseModel):
    total: float
    dis: float
    rec: float
    params_fraction: float
    macs: int


@dataclass
class Side:
    """One generator direction: its teacher, the teacher's D for its output domain, a fixed eval batch."""

    name: str
    teacher: nn.Module
    discriminator: nn.Module | None  # None: no trained D, the discriminator-aware term is 0
    x: torch.Tensor
    conditional: bool
    groups: ChannelGroups
    t_out: torch.Tensor = field(init=False)
    d_ref: torch.Tensor | None = field(init=False)
    full_params: int = field(init=False)

    def __post_init__(self) -> None:
        self.teacher.eval()
        with torch.no_grad():
            self.t_out = self.teacher(self.x)
            self.d_ref = self.judge(self.t_out) if self.discriminator is not None else None
        self.full_params = count_params(self.teacher)

    def judge(self, y: torch.Tensor) -> torch.Tensor:
        self.discriminator.eval()
        return self.discriminator(torch.cat([self.x, y], 1) if self.conditional else y)

    def prune(self, code: torch.Tensor) -> nn.Module:
        return prune_generator(self.teacher, self.groups.masks(code)).eval()

    @torch.no_grad()
    def terms(self, code: torch.Tensor, weights: FitnessWeights, other: nn.Module | None) -> LossTerms:
        g = self.prune(code)
        y = g(self.x)
        dis = F.mse_loss(self.judge(y), self.d_ref).item() if self.d_ref is not None else 0.0
        rec = F.l1_loss(other(y), self.x).item() if other is not None else F.l1_loss(y, self.t_out).item()
        frac = count_params(g) / self.full_params
        macs = macs_at(g, weights.macs_resolution)
        total = weights.lambda_dis * dis + weights.lambda_rec * rec + weights.gamma * frac
        if weights.budget_macs is not None:
            total += weights.budget_penalty * max(0.0, macs / weights.budget_macs - 1.0)
        return LossTerms(total=total, dis=dis, rec=rec, params_fraction=frac, macs=macs)


class SideResult(BaseModel):
    name: str
    best_code: list[int]
    best: LossTerms
    history: list[float]
    channel_config: str


class CoevolutionResult(BaseModel):
    sides: list[SideResult]
    generations: int
    evaluated: int


def coevolve(sides: list[Side], params: GAParams, generations: int, weights: FitnessWeights, seed: int = 0,
             progress_cb: Callable[[int], None] | None = None) -> CoevolutionResult:
    """Evolve one population per side; with two sides each is scored with the other's current best.

    Generation g: side 0 breeds and is re-scored against side 1's best, then side 1 against side 0's
    new best (alternating, as in the paper). With one side the loss is fixed (paired data).
    """
    if not 1 <= len(sides) <= 2:
        raise ValueError("one side (paired) or two sides (unpaired A→B, B→A)")
    pops = [Population(s.groups.n_bits, params, seed * 1009 + i, repair=s.groups.repair) for i, s in enumerate(sides)]
    best_nets: list[nn.Module | None] = [None] * len(sides)
    if len(sides) == 2:  # before any search, each side's partner is the other full teacher
        best_nets = [sides[0].teacher.eval(), sides[1].teacher.eval()]
    evaluated = 0

    def score(i: int) -> None:
        nonlocal evaluated
        other = best_nets[1 - i] if len(sides) == 2 else None
        pops[i].score(lambda c: sides[i].terms(c, weights, other).total)
        evaluated += len(pops[i].codes)
        best_nets[i] = sides[i].prune(pops[i].best[0])
        if progress_cb:
            progress_cb(len(pops[i].codes))

    for i in range(len(sides)):
        score(i)
    for _ in range(generations):
        for i in range(len(sides)):
            pops[i].breed()
            score(i)
    out = []
    for i, (side, pop) in enumerate(zip(sides, pops)):
        code, _ = pop.best
        other = best_nets[1 - i] if len(sides) == 2 else None
        out.append(SideResult(name=side.name, best_code=code.int().tolist(), best=side.terms(code, weights, other),
                              history=pop.history, channel_config=str(side.groups.widths(side.groups.masks(code)))))
    return CoevolutionResult(sides=out, generations=generations, evaluated=evaluated)
