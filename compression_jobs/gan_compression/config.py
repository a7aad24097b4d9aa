"""The job config (YAML → pydantic): one document drives every stage of a GAN Compression run."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from compression_jobs.data import DataConfig
from compression_jobs.losses import GanMode
from compression_jobs.coevolution.config import CoevolutionConfig
from compression_jobs.omgd.config import OmgdConfig


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


TEACHER_ARCH_FIELDS: tuple[str, ...] = ("arch", "ngf", "n_blocks", "num_downs", "norm")
"""Teacher fields that describe its architecture: with `checkpoint` they are inferred from the
file; the ones set explicitly (in the YAML next to `checkpoint`, or by --set) override."""


class TeacherConfig(_Cfg):
    """Train a pix2pix/CycleGAN teacher, or use a given generator checkpoint (any reference key layout,
    architecture inferred; see compression_jobs/checkpoints.py)."""

    checkpoint: str | None = Field(default=None, description="existing generator state dict; skips training")
    discriminator: str | None = Field(default=None, description="existing latest_net_D.pth (optional)")
    arch: Literal["resnet", "unet"] = "resnet"
    ngf: int = 64
    n_blocks: int = 9
    num_downs: int = 8
    norm: Literal["instance", "instance-affine", "batch", "none"] = "instance"
    norm_d: Literal["instance", "batch", "none"] = "batch"
    ndf: int = 64
    n_layers_d: int = 3
    steps: int = 2000
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    gan_mode: GanMode = "lsgan"
    lambda_l1: float = 100.0
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5

    def arch_overrides(self) -> dict[str, Any]:
        """The architecture fields set explicitly (they win over what a checkpoint implies)."""
        return {k: getattr(self, k) for k in TEACHER_ARCH_FIELDS if k in self.model_fields_set}


class StudentSpace(_Cfg):
    """The once-for-all design space: a MobileResnetGenerator supernet of width `ngf`."""

    ngf: int = 64
    n_blocks: int = 9
    channel_choices: list[float] | None = Field(
        default=None, description="width multipliers per searchable layer, e.g. [0.25, 0.5, 0.75, 1.0]"
    )


class DistillConfig(_Cfg):
    """Train the largest student with distillation from the teacher (stage `distill`)."""

    steps: int = 1000
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    gan_mode: GanMode = "lsgan"
    lambda_recon: float = 10.0
    lambda_distill: float = 1.0
    lambda_gan: float = 1.0
    lambda_gt: float = 10.0
    distill_layers: int = Field(default=3, ge=0, description="residual blocks matched by 1x1 mappers")
    recon_loss: Literal["l1", "l2"] = "l1"
    lambda_ssim: float = Field(default=0.0, ge=0, description="weight of (1 - SSIM) between student and teacher outputs")
    lr_schedule: Literal["constant", "cosine"] = Field(default="constant", description="cosine: anneal to 0 over the steps")
    train_crop: int | None = Field(default=None, ge=8, description=(
        "training crop side (None: data.crop_size); smaller crops = cheaper steps, evaluation stays at data.crop_size"))
    cache_teacher: bool = Field(default=False, description=(
        "compute the teacher's outputs on the training images once (at data.load_size) and crop them with the inputs; "
        "used when no feature distillation needs the teacher's activations (distill_layers 0). GAN Compression keeps "
        "them for all its stages in <run dir>/cache/ (checked against the teacher's weights and the images)"))


class SupernetConfig(_Cfg):
    steps: int = 1000
    lr: float = 2e-4
    sandwich: bool = Field(default=False, description="also train the largest/smallest config each step")


class SearchConfig(_Cfg):
    """Evolutionary search on held-out images, under a MACs or a measured-latency budget."""

    macs_budget: float | None = Field(default=None, description="MACs per image at 256x256 (the manifests' reference)")
    macs_budget_ratio: float | None = Field(default=None, description="budget as a fraction of the teacher's MACs")
    latency_budget_ms: float | None = None
    hardware_tag: str | None = Field(default=None, description="tag the latency budget applies to (default: this machine)")
    latency_table: str | None = Field(default=None, description=(
        "op latency table JSON (`pocketgan profile-ops --out FILE`) to predict latency from instead of the "
        "registry's table for the tag; its hardware tag must be the search's"))
    latency_points: int = Field(default=5, ge=2, description="configs measured to fit the latency model")
    population: int = 16
    generations: int = 5
    parents: int = 4
    mutate_prob: float = 0.3
    metric: Literal["ssim", "psnr"] = "ssim"
    max_publish: int = Field(default=3, ge=1, description="at most this many Pareto points are fine-tuned/published")

    @model_validator(mode="after")
    def _one_budget(self) -> "SearchConfig":
        n = sum(x is not None for x in (self.macs_budget, self.macs_budget_ratio, self.latency_budget_ms))
        if n == 0:
            raise ValueError("search needs one budget: macs_budget, macs_budget_ratio or latency_budget_ms")
        return self


class FinetuneConfig(_Cfg):
    steps: int = 500
    lr: float = 1e-4


class ExportConfig(_Cfg):
    resolution: int = Field(default=256, description="ONNX parity check and latency profile resolution")
    opset: int = 18
    fast_graph: bool = Field(default=True, description="export exact rewrites ORT runs faster (compression_jobs/models/fast.py)")
    profile: bool = True
    profile_runs: int = 20
    profile_threads: int | None = 1


class PublishConfig(_Cfg):
    enabled: bool = True
    publish_teacher: bool = True


MethodName = Literal["gan-compression", "omgd", "coevolution"]


class JobConfig(_Cfg):
    """One job. `method` picks the middle stages; teacher/data/eval/export/publish sections are shared.

    Method sections: `distill`/`supernet`/`search`/`finetune` (gan-compression; `search`'s MACs
    budget is also the budget of the other methods), `omgd`.
    """

    name: str = "gan-compression"
    method: MethodName = "gan-compression"
    task: str = "facades-label2photo"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = Field(default=None, description="torch threads (None: leave as is)")
    mixed_precision: Literal["off", "bf16"] = Field(default="off", description=(
        "bf16 autocast for teacher training and distillation (GPUs with bf16, e.g. scripts/gpu-compress)"))
    deterministic: bool = True
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentSpace = Field(default_factory=StudentSpace)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    supernet: SupernetConfig = Field(default_factory=SupernetConfig)
    search: SearchConfig = Field(default_factory=lambda: SearchConfig(macs_budget_ratio=0.05))
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    omgd: OmgdConfig = Field(default_factory=OmgdConfig)
    coevolution: CoevolutionConfig = Field(default_factory=CoevolutionConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    inception_weights: str | None = Field(default=None, description="TorchScript Inception for FID/KID")
    eval_batch_size: int = 8


def embedded_config_names() -> list[str]:
    folder = resources.files("compression_jobs") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None,
                teacher: str | Path | None = None) -> JobConfig:
    """Load an embedded config by name (`tiny`, `small`, `full`) or a YAML file by path.

    `teacher` (``compress run --teacher FILE``): use that checkpoint instead of training the
    config's teacher; the config's teacher architecture fields are dropped (the file's are
    inferred) and only `overrides` may set them again.
    """
    p = Path(name_or_path)
    if p.is_file():
        text = p.read_text()
    else:
        names = embedded_config_names()
        if str(name_or_path) not in names:
            raise FileNotFoundError(f"no config file {name_or_path!r} and no embedded config of that name (have {names})")
        text = (resources.files("compression_jobs") / "configs" / f"{name_or_path}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    if teacher is not None:
        section = data.setdefault("teacher", {}) or {}
        data["teacher"] = {k: v for k, v in section.items() if k not in TEACHER_ARCH_FIELDS + ("discriminator",)}
        data["teacher"]["checkpoint"] = str(teacher)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return JobConfig.model_validate(data)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value
