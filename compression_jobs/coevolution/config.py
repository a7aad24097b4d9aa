"""The `coevolution:` section of a job config (no other job-config imports: JobConfig imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compression_jobs.coevolution.genetic import GAParams
from compression_jobs.coevolution.search import FitnessWeights


class CoevolutionConfig(BaseModel):
    """Co-evolutionary channel pruning of the ResNet teacher (Shu et al. 2019), then fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    selection: Literal["coevolve", "magnitude"] = Field(default="coevolve", description=(
        "coevolve: the genetic search below; magnitude: no search, keep the channels with the largest norm scale "
        "(|gamma|, else filter L1) at the widest uniform fraction within the budget (fast warm start on a CPU)"))
    extra_budget_ratios: list[float] = Field(default_factory=list, description=(
        "magnitude selection only: one more student per ratio of the teacher's MACs (e.g. [0.033] for ~30x)"))
    population: int = Field(default=16, ge=2)
    generations: int = Field(default=10, ge=0)
    elite: int = Field(default=2, ge=0)
    crossover_prob: float = Field(default=0.9, ge=0, le=1)
    mutate_prob: float = Field(default=0.01, ge=0, le=1, description="per-bit flip probability")
    init_keep: tuple[float, float] = Field(default=(0.1, 1.0), description="initial codes keep a fraction in this range")
    prune_stream: bool = Field(default=True, description=(
        "also prune the residual stream width (one mask shared by every block); off: only block-inner, "
        "down- and up-sampling channels"))
    lambda_dis: float = Field(default=1.0, description="discriminator-aware loss weight")
    lambda_rec: float = Field(default=10.0, description="cycle (unpaired) / reconstruction-to-teacher (paired) L1 weight")
    gamma: float = Field(default=1.0, description="weight of the remaining-parameter fraction")
    use_budget: bool = Field(default=True, description=(
        "penalise codes over the job's MACs budget (search.macs_budget / macs_budget_ratio, as every method)"))
    budget_penalty: float = Field(default=10.0, ge=0, description="loss added per 100% over the budget")
    eval_images: int = Field(default=8, ge=1, description="training crops every code is scored on")
    finetune_steps: int = Field(default=200, ge=0, description="distillation steps for the compact generator")
    extra_finetune_steps: list[int] = Field(default_factory=list, description=(
        "steps for the extra budgets' students, in the order of extra_budget_ratios (missing: finetune_steps); "
        "smaller students cost less per step and need more steps to converge"))
    finetune_lr: float = 2e-4

    @model_validator(mode="after")
    def _extra_steps(self) -> "CoevolutionConfig":
        if len(self.extra_finetune_steps) > len(self.extra_budget_ratios):
            raise ValueError(f"extra_finetune_steps has {len(self.extra_finetune_steps)} entries for "
                             f"{len(self.extra_budget_ratios)} extra_budget_ratios")
        if any(n < 0 for n in self.extra_finetune_steps):
            raise ValueError("extra_finetune_steps must be >= 0")
        return self

    def steps_for(self, student: int) -> int:
        """Fine-tuning steps of student number `student` (0: the job's budget, then each extra budget)."""
        extra = self.extra_finetune_steps
        return extra[student - 1] if 0 < student <= len(extra) else self.finetune_steps

    def ga(self) -> GAParams:
        return GAParams(population=self.population, elite=self.elite, crossover_prob=self.crossover_prob,
                        mutate_prob=self.mutate_prob, init_keep=self.init_keep)

    def weights(self, budget_macs: int | None = None) -> FitnessWeights:
        return FitnessWeights(lambda_dis=self.lambda_dis, lambda_rec=self.lambda_rec, gamma=self.gamma,
                              budget_macs=budget_macs if self.use_budget else None,
                              budget_penalty=self.budget_penalty)
