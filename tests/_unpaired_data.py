"""A tiny synthetic CycleGAN-layout data set (trainA/ trainB/ testA/ testB/) for unpaired pipeline tests."""

from __future__ import annotations

import random
from pathlib import Path


def make_unpaired_data(root: Path, n_train: int = 6, n_test: int = 3, side: int = 40, seed: int = 1) -> Path:
    """Reddish A images and bluish B images with a little noise, as PNG files under `root`."""
    from PIL import Image

    rnd = random.Random(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for dom in "AB":
            for i in range(n):
                p = root / f"{split}{dom}" / f"{dom.lower()}{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                base = (200, 40, 40) if dom == "A" else (40, 40, 200)
                Image.new("RGB", (side, side), tuple(min(255, c + rnd.randrange(50)) for c in base)).save(p)
    return root
