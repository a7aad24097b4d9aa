"""scripts/gpu-compress on the CPU with a tiny config (no GPU here): the folder it promises, and exit 3 without CUDA."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-compress"
TINY = ["--set", "data.max_train=6", "--set", "data.max_test=3", "--set", "teacher.steps=4", "--set", "distill.steps=2",
        "--set", "supernet.steps=2", "--set", "finetune.steps=2", "--set", "search.population=4",
        "--set", "search.generations=1", "--set", "export.profile_runs=2"]


def _env() -> dict[str, str]:
    return {**os.environ, "POCKETGAN_NO_PROGRESS": "1"}


def test_gpu_compress_runs_a_tiny_config_on_cpu_with_bf16_and_writes_report_and_summary(tmp_path):
    out = tmp_path / "gpu"
    res = subprocess.run([str(SCRIPT), "--out", str(out), "--config", "tiny", "--device", "cpu", "--precision", "bf16",
                          *TINY], env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["gpu"] is None
    assert summary["students"] and all(s["macs_ratio"] > 1 for s in summary["students"])
    assert all(s["ssim_to_teacher"] is not None and s["ssim_to_truth"] is not None for s in summary["students"])
    assert {b["name"] for b in summary["baselines"]} == {"identity", "mean-image", "teacher"}
    assert set(summary["stage_seconds"]) >= {"train-teacher", "distill", "train-supernet", "search", "finetune", "export"}
    assert "baseline: mean-image" in (out / "report.md").read_text()
    config = (out / "run" / "config.yaml").read_text()
    assert "mixed_precision: bf16" in config and "device: cpu" in config


def test_gpu_compress_refuses_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: nothing to refuse")
    res = subprocess.run([str(SCRIPT), "--out", str(tmp_path / "x")], env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 3 and "no CUDA device" in res.stderr
    assert not (tmp_path / "x").exists()
