"""Honest baselines: every student is reported next to trivial generators (identity, mean training image)
on the same held-out images; one that does not beat them against the teacher is flagged and not published."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from compression_jobs.baselines import below_baseline, mean_image, trivial_baselines
from compression_jobs.compress_cli import compress_cli
from compression_jobs.data import DataConfig, ImageSet
from compression_jobs.pretrained import vintagify_teacher
from tests.test_teacher_checkpoint import TINY_VINTAGIFY


def test_baselines_score_trivial_generators_and_judge_students():
    cfg = DataConfig(root="embedded:facades", direction="BtoA", load_size=40, crop_size=32, max_train=6, max_test=4)
    train, test = ImageSet(cfg, "train"), ImageSet(cfg, "test")
    target = test.target  # a "teacher" that reproduces the ground truth exactly
    base = {b.name: b for b in trivial_baselines(test, train, target, 4, {"psnr_to_ground_truth": 20.0,
                                                                          "ssim_to_ground_truth": 0.5})}
    assert set(base) == {"identity", "mean-image", "teacher"}
    assert base["identity"].ssim_to_teacher == pytest.approx(base["identity"].ssim_to_ground_truth)
    assert base["teacher"].ssim_to_ground_truth == 0.5 and base["teacher"].ssim_to_teacher is None
    assert mean_image(train, 32).shape == (1, 3, 32, 32)
    best = max(base["identity"].ssim_to_teacher, base["mean-image"].ssim_to_teacher)
    assert below_baseline(best, list(base.values())) is True  # a tie does not beat it
    assert below_baseline(best + 1e-3, list(base.values())) is False
    assert below_baseline(None, list(base.values())) is None


def test_identity_is_left_out_when_channels_differ():
    cfg = DataConfig(root="embedded:facades", load_size=40, crop_size=32, max_train=4, max_test=2)
    train, test = ImageSet(cfg, "train"), ImageSet(cfg, "test")
    names = [b.name for b in trivial_baselines(test, train, torch.zeros(2, 1, 32, 32), 2)]
    assert names == []  # 3-channel inputs / mean image cannot be compared with a 1-channel output


def test_student_no_better_than_identity_is_flagged_and_not_published(tmp_path, registry, registry_env):
    teacher = vintagify_teacher()
    assert teacher is not None, "scripts/setup installs vintagify (the real teacher)"
    run = tmp_path / "run"
    args = ["run", "tiny", "--teacher", str(teacher), "--run-dir", str(run), "--set", "search.max_publish=1",
            *TINY_VINTAGIFY]
    env = {**registry_env, "POCKETGAN_NO_PROGRESS": "1"}
    res = CliRunner().invoke(compress_cli, args, env=env)
    assert res.exit_code == 0, res.output
    state = json.loads((run / "state.json").read_text())
    (student,) = [n for n in state["completed"]["export"]["info"]["artifacts"] if n != "teacher"]
    manifest = json.loads((run / "export" / student / "manifest.json").read_text())
    q = manifest["quality"]
    identity = next(b for b in q["baselines"] if b["name"] == "identity")
    assert q["ssim_to_teacher"] <= identity["ssim_to_teacher"]  # 2 training steps: worse than doing nothing
    assert q["below_baseline"] is True
    assert "FLAGGED" in (run / "export" / "report.md").read_text()
    assert f"NOT published {student}" in res.output
    published = {m.method for m in registry.list(task="facades-photo2vintage")}
    assert published == {"teacher"}

    # asked for explicitly, it is published, and the registry shows the flag and the baselines
    res = CliRunner().invoke(compress_cli, ["publish", *args[1:], "--publish-all"], env=env)
    assert res.exit_code == 0, res.output
    ids = {m.method: m.artifact_id for m in registry.list(task="facades-photo2vintage")}
    assert set(ids) == {"teacher", "gan-compression"}
    shown = subprocess.run([sys.executable, "-m", "pocketgan", "registry", "show", ids["gan-compression"],
                            "--task", "facades-photo2vintage"], env=registry_env, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "FLAGGED" in shown.stdout and "baseline identity" in shown.stdout and "baseline mean-image" in shown.stdout
