"""The `omgd:` section of a job config (kept free of other job-config imports: JobConfig imports it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from compression_jobs.losses import GanMode


class OmgdConfig(BaseModel):
    """Online distillation: two teachers trained with the GAN objective, one student learning only from them."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(default=None, ge=1, description=(
        "training steps; None: distill + supernet + finetune steps (GAN Compression's step budget)"))
    batch_size: int | None = Field(default=None, ge=1, description="None: distill.batch_size")
    lr: float = 2e-4
    beta1: float = 0.5
    gan_mode: GanMode = "lsgan"
    channel_config: str | None = Field(default=None, description=(
        "student widths (8 widths, e.g. 8_16_32_8_8_8_16_8); None: the widest uniform-multiplier config of the "
        "student space whose MACs fit search.macs_budget / macs_budget_ratio"))
    wide_ngf: int | None = Field(default=None, ge=8, description=(
        "wide teacher's base width (student depth); None: student.ngf, the space's full width"))
    deep_ngf: int | None = Field(default=None, ge=4, description="deep teacher's base width; None: student.ngf / 2")
    deep_n_blocks: int | None = Field(default=None, ge=1, description="deep teacher's blocks; None: 2 x student.n_blocks")
    lambda_teacher_l1: float = Field(default=100.0, description="teachers: L1 to ground truth (pix2pix)")
    lambda_l1: float = Field(default=10.0, description="student: L1 to each teacher's output")
    lambda_ssim: float = Field(default=10.0, description="student: 1 - SSIM to each teacher's output")
    lambda_feature: float = Field(default=1.0, description="student: L1 in each teacher's encoder feature space")
    lambda_style: float = Field(default=1.0, description="student: Gram-matrix (texture) MSE in that space")
    lambda_tv: float = Field(default=0.01, description="student: total variation of its output")
    lambda_cd: float = Field(default=1.0, description="student: channel-wise distillation from the wide teacher")
    cd_layers: int = Field(default=3, ge=0, description="residual blocks matched by 1x1 mappers for channel-wise KD")
    cd_temperature: float = Field(default=4.0, gt=0)
