"""Trivial baselines for every quality report: is a student better than doing (almost) nothing?

On the same held-out images as the students, against the same teacher outputs:

- ``identity``: the input returned unchanged (only when input and output have the same channels;
  for a mild photo filter such as vintagify this is a strong baseline: SSIM ~0.86 to the teacher);
- ``mean-image``: the pixel-wise mean training image (targets when paired, else the inputs), the
  best constant a regression to the mean could learn;
- ``teacher``: the teacher's own fidelity to the ground truth (paired data only), the ceiling for
  the students' fidelity to the truth.

A student is flagged ``below_baseline`` when its SSIM to the teacher is not above the best
trivial baseline's (identity / mean image); such students are not published unless asked.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from compression_jobs.data import ImageSet
from compression_jobs.gan_compression.evaluate import fidelity

TRIVIAL = ("identity", "mean-image")
"""Baselines a student has to beat (the teacher entry is a reference, not a competitor)."""


def mean_image(train: ImageSet, size: int) -> torch.Tensor:
    """Pixel-wise mean of the training targets (sources when there are none) at `size`x`size`, shape (1, C, H, W)."""
    images = train.target if train.target is not None else train.source
    mean = images.mean(0, keepdim=True)
    return F.interpolate(mean, size=(size, size), mode="area") if mean.shape[-1] != size else mean


def trivial_baselines(test: ImageSet, train: ImageSet, teacher_out: torch.Tensor, batch_size: int,
                      teacher_quality: dict | None = None) -> list:
    """Baseline entries (registry.manifest.Baseline) for `test`; identity only when channels match."""
    from registry.manifest import Baseline

    out = []
    gens: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    if test.source.shape[1] == teacher_out.shape[1]:
        gens["identity"] = lambda x: x
    mean = mean_image(train, test.source.shape[-1])
    if mean.shape[1] == teacher_out.shape[1]:
        gens["mean-image"] = lambda x: mean.expand(x.shape[0], -1, -1, -1)
    for name, gen in gens.items():
        m = fidelity(gen, test, teacher_out, batch_size)
        out.append(Baseline(name=name, **m))
    if teacher_quality and teacher_quality.get("ssim_to_ground_truth") is not None:
        out.append(Baseline(name="teacher", psnr_to_teacher=None, ssim_to_teacher=None,
                            psnr_to_ground_truth=teacher_quality["psnr_to_ground_truth"],
                            ssim_to_ground_truth=teacher_quality["ssim_to_ground_truth"]))
    return out


def best_trivial(baselines: list) -> object | None:
    """The trivial baseline with the highest SSIM to the teacher (None if there is none)."""
    cands = [b for b in baselines if b.name in TRIVIAL and b.ssim_to_teacher is not None]
    return max(cands, key=lambda b: b.ssim_to_teacher) if cands else None


def below_baseline(ssim_to_teacher: float | None, baselines: list) -> bool | None:
    """True when the student's SSIM to the teacher does not beat the best trivial baseline's."""
    best = best_trivial(baselines)
    if best is None or ssim_to_teacher is None:
        return None
    return ssim_to_teacher <= best.ssim_to_teacher
