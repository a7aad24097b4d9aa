"""Fidelity of a generator on the held-out split: to the teacher, and to ground truth when paired."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from compression_jobs.data import ImageSet
from compression_jobs.metrics import (
    FidelityAccumulator,
    InceptionFeatures,
    fid_from_features,
    kid_from_features,
)

Generate = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def outputs(generate: Generate, test: ImageSet, batch_size: int) -> torch.Tensor:
    """All held-out outputs of a generator, in order (eval mode is the caller's job)."""
    return torch.cat([generate(x) for x, _ in test.batches(batch_size)])


@torch.no_grad()
def fidelity(generate: Generate, test: ImageSet, teacher_out: torch.Tensor | None, batch_size: int) -> dict[str, float | None]:
    """Mean PSNR/SSIM of the generator's outputs to the teacher's and to the ground truth."""
    to_t, to_gt = FidelityAccumulator(), FidelityAccumulator()
    start = 0
    for x, gt in test.batches(batch_size):
        y = generate(x)
        if teacher_out is not None:
            to_t.update(y, teacher_out[start : start + len(x)])
        if gt is not None and test.paired:
            to_gt.update(y, gt)
        start += len(x)
    return {
        "psnr_to_teacher": to_t.psnr if to_t.n else None,
        "ssim_to_teacher": to_t.ssim if to_t.n else None,
        "psnr_to_ground_truth": to_gt.psnr if to_gt.n else None,
        "ssim_to_ground_truth": to_gt.ssim if to_gt.n else None,
    }


def fid_kid(weights: Path, fake: torch.Tensor, real: torch.Tensor, batch_size: int = 8) -> dict[str, float]:
    """FID and KID between generated and real held-out images (small sets: indicative only)."""
    net = InceptionFeatures(weights)
    f_fake = torch.cat([torch.from_numpy(net(fake[i : i + batch_size])) for i in range(0, len(fake), batch_size)]).numpy()
    f_real = torch.cat([torch.from_numpy(net(real[i : i + batch_size])) for i in range(0, len(real), batch_size)]).numpy()
    n = min(len(f_fake), len(f_real))
    return {
        "fid": fid_from_features(f_fake, f_real),
        "kid": kid_from_features(f_fake, f_real, subsets=10, subset_size=n),
    }
