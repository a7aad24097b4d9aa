"""Image data for compression jobs: paired (pix2pix) and unpaired (CycleGAN) layouts.

Images are small data sets (hundreds of files), so they are decoded once into memory at
`load_size` and augmented (random crop + flip) per batch from a seeded generator: a run with
the same seed sees exactly the same batches, which is what makes `--resume` reproducible.

Layouts:
- ``paired``: each file is A|B side by side (pix2pix ``combine_A_and_B``); split folders
  ``train/``, ``test/`` (``val/``) under the root.
- ``paired-folders``: ``A/`` and ``B/`` folders with matching file names, optionally with
  split sub-folders (``A/train``, ``B/train`` …).
- ``unpaired``: CycleGAN ``trainA/ trainB/ testA/ testB/``.

The held-out split is the ``test_split`` folder when it exists, else a seeded split of the
training files (``holdout_fraction``); training never sees it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
EMBEDDED_PREFIX = "embedded:"


class DataConfig(BaseModel):
    """Where the images are and how to turn them into tensors."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(default="embedded:facades", description="folder, or embedded:<name> for the shipped subset")
    name: str | None = Field(default=None, description="data set name recorded in manifests (default: folder name)")
    layout: Literal["paired", "paired-folders", "unpaired"] = "paired"
    direction: Literal["AtoB", "BtoA"] = Field(default="BtoA", description="facades label→photo is BtoA")
    load_size: int = Field(default=72, ge=8, description="training images are resized to this square side")
    crop_size: int = Field(default=64, ge=8, description="random crop side for training; eval images are resized to it")
    flip: bool = True
    train_split: str = "train"
    test_split: str = "test"
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1, description="used only when test_split does not exist")
    targets: bool = Field(default=True, description="False: ignore the target images; the teacher's outputs are the "
                          "only targets (pseudo-pairs), e.g. photos for an unpaired photo->vintage teacher")
    max_train: int | None = Field(default=None, ge=1)
    max_test: int | None = Field(default=None, ge=1)
    input_nc: int = 3
    output_nc: int = 3

    @model_validator(mode="after")
    def _sizes(self) -> "DataConfig":
        if self.crop_size > self.load_size:
            raise ValueError(f"crop_size {self.crop_size} must be <= load_size {self.load_size}")
        return self

    @property
    def dataset_name(self) -> str:
        if self.name:
            return self.name
        return resolve_root(self.root).name


def embedded_root(name: str) -> Path:
    """Path of a data set shipped inside the package (compression_jobs/embedded/<name>)."""
    path = Path(str(resources.files("compression_jobs") / "embedded" / name))
    if not path.is_dir():
        raise FileNotFoundError(f"no embedded data set {name!r} (looked in {path})")
    return path


def resolve_root(root: str) -> Path:
    if root.startswith(EMBEDDED_PREFIX):
        return embedded_root(root[len(EMBEDDED_PREFIX):])
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data root {path} is not a folder")
    return path


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)


def _natural_key(p: Path) -> tuple:
    stem = p.stem
    return (0, int(stem), p.name) if stem.isdigit() else (1, 0, p.name)


def _seeded_split(files: list, fraction: float, seed: int = 0) -> tuple[list, list]:
    """Deterministic train/held-out split by hashing names (stable when files are added)."""
    def score(item) -> str:
        name = item[0].name if isinstance(item, tuple) else item.name
        return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()

    ranked = sorted(files, key=score)
    n_test = max(1, int(round(len(files) * fraction)))
    test = set(id(x) for x in ranked[:n_test])
    return [f for f in files if id(f) not in test], [f for f in files if id(f) in test]


@dataclass(frozen=True)
class Sample:
    """One item: `source` is the generator input, `target` the output-domain image (paired GT or an
    unpaired image of the other domain), `paired` says whether target corresponds to source."""

    name: str
    source: Image.Image
    target: Image.Image | None
    paired: bool


def list_split(cfg: DataConfig, split: Literal["train", "test"]) -> list[tuple[Path, Path | None]]:
    """File pairs (A path, B path) of a split; B is None for side-by-side files and unpaired A lists."""
    root = resolve_root(cfg.root)
    want = cfg.train_split if split == "train" else cfg.test_split
    if cfg.layout == "paired":
        if (root / cfg.test_split).is_dir():
            files = [(p, None) for p in _images(root / want)]
        else:
            all_files = [(p, None) for p in _images(root / cfg.train_split) or _images(root)]
            tr, te = _seeded_split(all_files, cfg.holdout_fraction)
            files = tr if split == "train" else te
    elif cfg.layout == "paired-folders":
        def pairs(a_dir: Path, b_dir: Path) -> list[tuple[Path, Path | None]]:
            b_names = {p.name: p for p in _images(b_dir)}
            out = [(a, b_names[a.name]) for a in _images(a_dir) if a.name in b_names]
            if not out:
                raise FileNotFoundError(f"no A/B files with matching names under {a_dir} and {b_dir}")
            return out

        if (root / "A" / cfg.test_split).is_dir():
            files = pairs(root / "A" / want, root / "B" / want)
        else:
            tr, te = _seeded_split(pairs(root / "A", root / "B"), cfg.holdout_fraction)
            files = tr if split == "train" else te
    else:  # unpaired: files are listed per domain; pairing happens at batch time
        src, _ = ("A", "B") if cfg.direction == "AtoB" else ("B", "A")
        files = [(p, None) for p in _images(root / f"{want}{src}")]
    limit = cfg.max_train if split == "train" else cfg.max_test
    if limit is not None:
        files = files[:limit]
    if not files:
        raise FileNotFoundError(f"no {split} images for layout {cfg.layout!r} under {root}")
    return files


def _unpaired_targets(cfg: DataConfig, split: str) -> list[Path]:
    root = resolve_root(cfg.root)
    want = cfg.train_split if split == "train" else cfg.test_split
    tgt = "B" if cfg.direction == "AtoB" else "A"
    return _images(root / f"{want}{tgt}")


def load_samples(cfg: DataConfig, split: Literal["train", "test"]) -> list[Sample]:
    """Decode a split into PIL images, with source/target swapped according to `direction`."""
    if not cfg.targets:
        return [Sample(s.name, s.source, None, paired=False) for s in _samples(cfg, split)]
    return _samples(cfg, split)


def _samples(cfg: DataConfig, split: Literal["train", "test"]) -> list[Sample]:
    out: list[Sample] = []
    if cfg.layout == "unpaired":
        sources = list_split(cfg, split)
        targets = _unpaired_targets(cfg, split)
        for i, (path, _) in enumerate(sources):
            tgt = Image.open(targets[i % len(targets)]).convert("RGB") if targets else None
            out.append(Sample(path.name, Image.open(path).convert("RGB"), tgt, paired=False))
        return out
    for a_path, b_path in list_split(cfg, split):
        if b_path is None:
            both = Image.open(a_path).convert("RGB")
            w, h = both.size
            a = both.crop((0, 0, w // 2, h))
            b = both.crop((w // 2, 0, w, h))
        else:
            a = Image.open(a_path).convert("RGB")
            b = Image.open(b_path).convert("RGB")
        src, tgt = (a, b) if cfg.direction == "AtoB" else (b, a)
        out.append(Sample(a_path.name, src, tgt, paired=True))
    return out


def to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """PIL image → float tensor CHW in [-1, 1] at size×size (bicubic)."""
    img = img.resize((size, size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def to_image(t: torch.Tensor) -> Image.Image:
    """Tensor CHW in [-1, 1] → PIL RGB image."""
    arr = ((t.detach().clamp(-1, 1).permute(1, 2, 0).cpu().numpy() + 1.0) * 127.5).round().astype(np.uint8)
    return Image.fromarray(arr)


class ImageSet:
    """A split held in memory as tensors: `source[i]`, `target[i]` (or None), `names[i]`."""

    def __init__(self, cfg: DataConfig, split: Literal["train", "test"]):
        self.cfg = cfg
        self.split = split
        size = cfg.load_size if split == "train" else cfg.crop_size
        samples = load_samples(cfg, split)
        self.names = [s.name for s in samples]
        self.paired = all(s.paired for s in samples)
        self.source = torch.stack([to_tensor(s.source, size) for s in samples])
        has_target = all(s.target is not None for s in samples)
        self.target = torch.stack([to_tensor(s.target, size) for s in samples]) if has_target else None

    def __len__(self) -> int:
        return len(self.names)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Deterministic, un-augmented batches in order (for evaluation)."""
        for i in range(0, len(self), batch_size):
            tgt = self.target[i : i + batch_size] if self.target is not None else None
            yield self.source[i : i + batch_size], tgt


class TrainStream:
    """Infinite augmented training batches; batch k depends only on (seed, k)."""

    def __init__(self, images: ImageSet, batch_size: int, seed: int):
        self.images = images
        self.batch_size = min(batch_size, len(images))
        self.seed = seed
        self.crop = images.cfg.crop_size
        self.flip = images.cfg.flip

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Batch number k: indices from a per-epoch permutation, crop/flip shared by source and target
        when paired (independent target index when unpaired)."""
        n = len(self.images)
        per_epoch = max(1, n // self.batch_size)
        epoch, pos = divmod(k, per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        idx = perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        rng = random.Random(self.seed * 7_919 + k)
        srcs, tgts = [], []
        load = self.images.source.shape[-1]
        for i in idx.tolist():
            x0, y0 = rng.randint(0, load - self.crop), rng.randint(0, load - self.crop)
            flip = self.flip and rng.random() < 0.5
            s = self.images.source[i, :, y0 : y0 + self.crop, x0 : x0 + self.crop]
            srcs.append(s.flip(-1) if flip else s)
            if self.images.target is not None:
                j = i if self.images.paired else rng.randrange(n)
                t = self.images.target[j, :, y0 : y0 + self.crop, x0 : x0 + self.crop]
                tgts.append(t.flip(-1) if flip else t)
        return torch.stack(srcs), (torch.stack(tgts) if tgts else None)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        k = 0
        while True:
            yield self.batch(k)
            k += 1
