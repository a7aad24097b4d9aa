"""Data loaders: layouts, direction, held-out split never overlapping training, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compression_jobs.data import DataConfig, ImageSet, TrainStream, embedded_root, list_split, load_samples

EMBEDDED = embedded_root("facades")


@pytest.mark.parametrize(("name", "min_files", "max_bytes"), [("facades", 52, 2_000_000),
                                                           ("facades-photos", 476, 4_000_000)])
def test_embedded_subset_matches_its_checksums_and_is_small(name: str, min_files: int, max_bytes: int):
    root = embedded_root(name)
    lines = (root / "SHA256SUMS").read_text().split("\n")
    entries = [line.split("  ") for line in lines if line.strip()]
    assert len(entries) >= min_files
    listed = {rel for _, rel in entries}
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*.jpg")}
    assert listed == on_disk  # every shipped image is listed, and every listed one is shipped
    total = 0
    for digest, rel in entries:
        data = (root / rel).read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == digest, rel
    assert total < max_bytes
    assert "CMP Facade Database" in (root / "README.md").read_text()


def test_embedded_photos_are_photo_only_and_share_the_held_out_images():
    """The demo's photo set reads as unpaired photos without targets; its held-out photos are the whole
    test split, the paired subset's 12 first (so both describe the same unseen facades)."""
    cfg = DataConfig(root="embedded:facades-photos", layout="unpaired", direction="AtoB", targets=False,
                     load_size=144, crop_size=128)
    train, test = load_samples(cfg, "train"), load_samples(cfg, "test")
    assert len(train) == 400 and len(test) == 76
    assert all(s.target is None and s.source.size == (144, 144) for s in train + test)
    assert [s.name for s in test[:12]] == [p.name for p, _ in list_split(DataConfig(root="embedded:facades"), "test")]


def test_paired_split_folders_never_overlap_and_direction_swaps_halves():
    cfg = DataConfig(root="embedded:facades", direction="BtoA")
    train, test = list_split(cfg, "train"), list_split(cfg, "test")
    assert {p.resolve() for p, _ in train}.isdisjoint({p.resolve() for p, _ in test})
    assert all(p.parent.name == "test" for p, _ in test)
    s_ba = load_samples(cfg, "test")[0]
    s_ab = load_samples(cfg.model_copy(update={"direction": "AtoB"}), "test")[0]
    whole = Image.open(EMBEDDED / "test" / s_ba.name).convert("RGB")
    left = whole.crop((0, 0, whole.width // 2, whole.height))
    # BtoA: the source is the right half (label map), the target the left half (photo)
    assert np.array_equal(np.asarray(s_ba.target), np.asarray(left))
    assert np.array_equal(np.asarray(s_ab.source), np.asarray(left))


def _write(path: Path, color: tuple[int, int, int], size=(16, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_seeded_holdout_for_folder_pairs_is_disjoint_and_stable(tmp_path):
    for i in range(20):
        _write(tmp_path / "A" / f"{i}.png", (i * 10, 0, 0))
        _write(tmp_path / "B" / f"{i}.png", (0, i * 10, 0))
    _write(tmp_path / "B" / "orphan.png", (1, 1, 1))
    cfg = DataConfig(root=str(tmp_path), layout="paired-folders", direction="AtoB", holdout_fraction=0.25,
                     load_size=16, crop_size=16)
    train, test = list_split(cfg, "train"), list_split(cfg, "test")
    assert len(train) + len(test) == 20 and len(test) == 5
    assert {a.name for a, _ in train}.isdisjoint({a.name for a, _ in test})
    assert all(a.name == b.name for a, b in train + test)
    assert [a.name for a, _ in list_split(cfg, "test")] == [a.name for a, _ in test]
    s = load_samples(cfg, "train")[0]
    assert s.source.getpixel((0, 0))[1] == 0 and s.target.getpixel((0, 0))[0] == 0  # A→B


def test_unpaired_layout_lists_domains(tmp_path):
    for split in ("train", "test"):
        for i in range(3):
            _write(tmp_path / f"{split}A" / f"a{i}.png", (200, 0, 0))
            _write(tmp_path / f"{split}B" / f"b{i}.png", (0, 0, 200))
    cfg = DataConfig(root=str(tmp_path), layout="unpaired", direction="AtoB", load_size=16, crop_size=16)
    train = ImageSet(cfg, "train")
    assert not train.paired and len(train) == 3
    assert train.source[:, 0].mean() > 0.5 and train.target[:, 2].mean() > 0.5
    test = ImageSet(cfg, "test")
    assert len(test) == 3 and test.target is not None


def test_train_stream_is_deterministic_and_crops_paired_images_alike():
    cfg = DataConfig(root="embedded:facades", load_size=40, crop_size=32, max_train=8)
    images = ImageSet(cfg, "train")
    a, b = TrainStream(images, 4, seed=3), TrainStream(images, 4, seed=3)
    x1, y1 = a.batch(5)
    x2, y2 = b.batch(5)
    assert x1.shape == (4, 3, 32, 32) and torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = TrainStream(images, 4, seed=4).batch(5)
    assert not torch.equal(x1, x3)
    assert x1.min() >= -1 and x1.max() <= 1


def test_bad_root_and_bad_sizes_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_split(DataConfig(root=str(tmp_path / "nope")), "train")
    with pytest.raises(ValueError):
        DataConfig(load_size=32, crop_size=64)
