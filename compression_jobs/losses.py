"""Losses shared by teacher training and GAN Compression: GAN objectives and feature distillation."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

GanMode = Literal["lsgan", "vanilla", "hinge"]


class GANLoss(nn.Module):
    """The pix2pix/CycleGAN GAN objective: LSGAN (MSE to 1/0), vanilla (BCE with logits) or hinge."""

    def __init__(self, mode: GanMode = "lsgan"):
        super().__init__()
        self.mode = mode

    def forward(self, pred: torch.Tensor, target_is_real: bool, for_discriminator: bool = True) -> torch.Tensor:
        if self.mode == "lsgan":
            target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
            return F.mse_loss(pred, target)
        if self.mode == "vanilla":
            target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
            return F.binary_cross_entropy_with_logits(pred, target)
        if self.mode == "hinge":
            if for_discriminator:
                return F.relu(1 - pred).mean() if target_is_real else F.relu(1 + pred).mean()
            return -pred.mean()
        raise ValueError(f"unknown gan mode {self.mode!r}")


class FeatureMapper(nn.Module):
    """Learnable 1x1 convs mapping student features to the teacher's width (GAN Compression's netA).

    Each mapper is built for the student's *largest* width; a narrower sub-network of the
    supernet uses the first `c` input columns of the weight, exactly like its sliced convs.
    """

    def __init__(self, student_channels: list[int], teacher_channels: list[int]):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError("need one teacher layer per student layer")
        self.maps = nn.ModuleList(
            nn.Conv2d(s, t, kernel_size=1) for s, t in zip(student_channels, teacher_channels)
        )
        for m in self.maps:
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)

    def forward(self, student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
        """Mean L2 (MSE) between mapped student features and (detached) teacher features."""
        losses = []
        for m, s, t in zip(self.maps, student_feats, teacher_feats):
            c = s.shape[1]
            mapped = F.conv2d(s, m.weight[:, :c], m.bias)
            losses.append(F.mse_loss(mapped, t.detach()))
        return torch.stack(losses).mean()


class FeatureTap:
    """Records the outputs of named sub-modules during a forward pass (forward hooks)."""

    def __init__(self, model: nn.Module, names: list[str]):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise KeyError(f"no such layers {missing}; available: {[n for n in modules if n][:40]}")
        self.names = names
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def fn(_module, _inputs, output):
            self.outputs[name] = output

        return fn

    def features(self) -> list[torch.Tensor]:
        return [self.outputs[n] for n in self.names]

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def default_distill_layers(model: nn.Module, count: int = 3) -> list[str]:
    """Names of `count` evenly spaced residual blocks (the layers GAN Compression distils)."""
    blocks = [n for n, m in model.named_modules() if n and "resnetblock" in type(m).__name__.lower()]
    if not blocks:
        return []
    if count >= len(blocks):
        return blocks
    step = len(blocks) / count
    return [blocks[min(len(blocks) - 1, int(step * (i + 1)) - 1)] for i in range(count)]
