"""OMGD's online multi-granularity distillation (Ren et al., ICCV 2021), one training step at a time.

Two teachers — a *wider* one (more channels) and a *deeper* one (more residual blocks) — are
trained online with the pix2pix GAN objective (each has its own discriminator and an L1 to the
ground truth). The student never sees the discriminators or the ground truth: it learns only
from the teachers' outputs of the same step (computed before the teachers' update), through

- output level: L1 + (1 - SSIM) to each teacher's output;
- feature level: L1 and Gram-matrix (texture) MSE in each teacher's own encoder feature space
  (stem + downsampling convs applied to the two output images; a stand-in for VGG, which cannot
  be downloaded here), with that encoder's weights frozen as they were in the teachers' forward pass;
- intermediate level: channel-wise distillation from the wide teacher — student residual-block
  features mapped by learnable 1x1 convs to the teacher's widths, a spatial softmax per channel
  (temperature τ) and KL(teacher ‖ student)·τ²;
- total variation of the student's output.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from compression_jobs.gan_compression.distill import make_mapper
from compression_jobs.losses import FeatureMapper, FeatureTap, GANLoss
from compression_jobs.metrics import ssim
from compression_jobs.omgd.config import OmgdConfig

ENCODER_LAYERS = 10
"""Stem (pad, conv7, norm, relu) + two stride-2 (conv, norm, relu): the ResNet generator's encoder."""


def channel_distill(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """Channel-wise KD: per channel a softmax over H·W positions; KL(teacher ‖ student)·τ², mean over N·C."""
    n, c, h, w = teacher.shape
    log_s = F.log_softmax(student.reshape(n * c, h * w) / tau, dim=1)
    log_t = F.log_softmax(teacher.detach().reshape(n * c, h * w) / tau, dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * tau**2


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix (N, C, C) averaged over positions: the texture statistics style losses compare."""
    n, c, h, w = f.shape
    flat = f.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between horizontally and vertically neighbouring pixels."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


class FrozenEncoder:
    """A teacher's encoder as a fixed feature space for the student's losses: weights copied (detached)
    when the teacher produced its outputs, so no gradient reaches the teacher and the teacher's own
    update later in the step does not change what the student is compared in."""

    def __init__(self, teacher: nn.Module):
        self.encoder = teacher.model[:ENCODER_LAYERS]

    def freeze(self) -> dict[str, torch.Tensor]:
        state = {k: v.detach().clone() for k, v in self.encoder.named_parameters()}
        return {**state, **{k: v.clone() for k, v in self.encoder.named_buffers()}}

    def __call__(self, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.encoder, state, (x,))


@dataclass
class TeacherOutputs:
    """What the student may learn from: detached teacher outputs, wide-teacher features and
    the teachers' encoder weights, all as they were in this step's teacher forward pass."""

    outputs: list[torch.Tensor]
    wide_features: list[torch.Tensor]
    encoders: list[dict[str, torch.Tensor]]


class OnlineDistiller:
    """Teachers + discriminators + student + 1x1 mappers, with their optimizers; `step` trains all of them."""

    def __init__(self, cfg: OmgdConfig, *, wide: nn.Module, deep: nn.Module, discriminators: list[nn.Module],
                 student: nn.Module, sample: torch.Tensor, conditional_d: bool = True):
        self.cfg = cfg
        self.teachers = [wide, deep]
        self.discriminators = discriminators
        self.student = student
        self.conditional_d = conditional_d
        mapper, t_layers, s_layers = make_mapper(wide, student, cfg.cd_layers, sample)
        self.mapper: FeatureMapper | None = mapper
        self.layers = (t_layers, s_layers)
        self.tap_w: FeatureTap | None = None
        self.tap_s: FeatureTap | None = None
        self._attach_taps()
        self.same_channels = sample.shape[1] == self._out_channels(student, sample)
        self.encoders = [FrozenEncoder(t) for t in self.teachers] if self.same_channels else []
        self.gan = GANLoss(cfg.gan_mode)
        betas = (cfg.beta1, 0.999)
        self.opt_t = torch.optim.Adam([p for t in self.teachers for p in t.parameters()], lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam([p for d in discriminators for p in d.parameters()], lr=cfg.lr, betas=betas)
        s_params = list(student.parameters()) + (list(mapper.parameters()) if mapper is not None else [])
        self.opt_s = torch.optim.Adam(s_params, lr=cfg.lr, betas=betas)

    @staticmethod
    def _out_channels(model: nn.Module, sample: torch.Tensor) -> int:
        with torch.no_grad():
            return model(sample[:1]).shape[1]

    def modules(self) -> list[nn.Module]:
        return [*self.teachers, *self.discriminators, self.student] + ([self.mapper] if self.mapper else [])

    def _attach_taps(self) -> None:
        if self.mapper is not None:
            self.tap_w = FeatureTap(self.teachers[0], self.layers[0])
            self.tap_s = FeatureTap(self.student, self.layers[1])

    def close(self) -> None:
        for tap in (self.tap_w, self.tap_s):
            if tap is not None:
                tap.close()
        self.tap_w = self.tap_s = None

    def _d_in(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, y], 1) if self.conditional_d else y

    def teacher_step(self, x: torch.Tensor, gt: torch.Tensor) -> tuple[TeacherOutputs, dict[str, float]]:
        """One pix2pix update of both teachers and their discriminators; returns their pre-update
        outputs (detached) for the student."""
        outs = [t(x) for t in self.teachers]
        wide_feats = [f.detach() for f in self.tap_w.features()] if self.tap_w is not None else []
        encoders = [enc.freeze() for enc in self.encoders]
        self.opt_d.zero_grad(set_to_none=True)
        loss_d = sum(0.5 * (self.gan(d(self._d_in(x, gt)), True) + self.gan(d(self._d_in(x, o.detach())), False))
                     for d, o in zip(self.discriminators, outs))
        loss_d.backward()
        self.opt_d.step()
        self.opt_t.zero_grad(set_to_none=True)
        loss_gan = sum(self.gan(d(self._d_in(x, o)), True, for_discriminator=False)
                       for d, o in zip(self.discriminators, outs))
        loss_l1 = sum(F.l1_loss(o, gt) for o in outs)
        (loss_gan + self.cfg.lambda_teacher_l1 * loss_l1).backward()
        self.opt_t.step()
        log = {"teacher_loss_d": loss_d.item(), "teacher_loss_gan": loss_gan.item(), "teacher_loss_l1": loss_l1.item()}
        return TeacherOutputs([o.detach() for o in outs], wide_feats, encoders), log

    def student_loss(self, x: torch.Tensor, teach: TeacherOutputs) -> tuple[torch.Tensor, dict[str, float]]:
        """The student's whole objective. Its only inputs are x and the (detached) teacher outputs:
        no discriminator, no ground truth."""
        cfg = self.cfg
        s = self.student(x)
        parts: dict[str, torch.Tensor] = {}
        zero = s.new_zeros(())
        parts["l1"] = sum((F.l1_loss(s, t) for t in teach.outputs), zero)
        parts["ssim"] = sum(((1 - ssim(s, t)).mean() for t in teach.outputs), zero).float()
        parts["feature"], parts["style"] = zero, zero
        for enc, state, t in zip(self.encoders, teach.encoders, teach.outputs):
            fs, ft = enc(state, s), enc(state, t)
            parts["feature"] = parts["feature"] + F.l1_loss(fs, ft)
            parts["style"] = parts["style"] + F.mse_loss(gram(fs), gram(ft))
        parts["tv"] = total_variation(s)
        parts["cd"] = zero
        if self.mapper is not None:
            cd = [channel_distill(m(f), t, cfg.cd_temperature)
                  for m, f, t in zip(self.mapper.maps, self.tap_s.features(), teach.wide_features)]
            parts["cd"] = torch.stack(cd).mean()
        weights = {"l1": cfg.lambda_l1, "ssim": cfg.lambda_ssim, "feature": cfg.lambda_feature,
                   "style": cfg.lambda_style, "tv": cfg.lambda_tv, "cd": cfg.lambda_cd}
        total = sum(weights[k] * v for k, v in parts.items())
        return total, {f"student_{k}": v.item() for k, v in parts.items()}

    def step(self, x: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
        """Teachers (+ discriminators) learn from ground truth; then the student learns from the teachers."""
        teach, log = self.teacher_step(x, gt)
        self.opt_s.zero_grad(set_to_none=True)
        loss, parts = self.student_loss(x, teach)
        loss.backward()
        self.opt_s.step()
        return {**log, **parts, "student_total": loss.item()}

    def snapshot(self) -> "OnlineDistiller":
        """A deep copy (models and optimizer states) — for tests that compare two steps from one state."""
        self.close()  # hooks hold closures over this object's taps: detach them before copying
        try:
            clone = copy.deepcopy(self)
        finally:
            self._attach_taps()
        clone._attach_taps()
        return clone
