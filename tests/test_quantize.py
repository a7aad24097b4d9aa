"""INT8 static quantization (QDQ) with calibration on real images, as a separate artifact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from compression_jobs.export import export_artifact
from compression_jobs.models import mobile_resnet_generator
from compression_jobs.quantize import quantize_artifact
from registry.artifact import read_artifact_dir, sha256_file
from registry.errors import InvalidInput
from registry.runtime import OnnxGenerator

torch.set_num_threads(1)
IMAGES = Path(__file__).resolve().parents[1] / "compression_jobs" / "embedded" / "facades" / "test"


@pytest.fixture(scope="module")
def fp32_artifact(tmp_path_factory) -> Path:
    if not IMAGES.is_dir():
        pytest.skip(f"embedded facades images missing at {IMAGES}")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("fp32") / "art"
    export_artifact(mobile_resnet_generator("8_8_16_8_16_16_8_8", n_blocks=3), out, task="facades-label2photo",
                    method="gan-compression", exporter="torchscript")
    return out


def test_int8_artifact_is_separate_runs_and_records_fidelity(fp32_artifact, tmp_path):
    before = sha256_file(fp32_artifact / "model.onnx")
    fp32 = read_artifact_dir(fp32_artifact)
    m = quantize_artifact(fp32_artifact, IMAGES, tmp_path / "int8", resolution=64, n_calibration=6, n_holdout=3, half="right")
    assert m.method == "int8" and m.architecture.precision == "int8" and m.parent == fp32.artifact_id
    assert m.artifact_id != fp32.artifact_id and m.task == fp32.task
    assert m.architecture.channel_config == fp32.architecture.channel_config and m.architecture.macs == fp32.architecture.macs
    assert m.quality.psnr_to_fp32 is not None and 15 < m.quality.psnr_to_fp32 <= 100
    assert m.job["quantization"]["calibration_images"] == 6 and m.job["quantization"]["holdout_images"] == 3
    assert read_artifact_dir(tmp_path / "int8", verify=True) == m
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really QDQ
    gen = OnnxGenerator(tmp_path / "int8" / "model.onnx", providers=["CPUExecutionProvider"], intra_op_threads=1)
    assert gen.size_multiple == 4
    y = gen.run(np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 48)).astype(np.float32))  # dynamic shapes kept
    assert y.shape == (2, 3, 32, 48) and np.isfinite(y).all()
    assert sha256_file(fp32_artifact / "model.onnx") == before  # fp32 untouched


def test_quantize_refuses_to_overwrite(fp32_artifact, tmp_path):
    with pytest.raises(InvalidInput, match="new directory"):
        quantize_artifact(fp32_artifact, IMAGES, fp32_artifact, resolution=64)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(InvalidInput, match="not empty"):
        quantize_artifact(fp32_artifact, IMAGES, tmp_path / "busy", resolution=64)
    (tmp_path / "few").mkdir()
    with pytest.raises(InvalidInput, match="at least 2 images"):
        quantize_artifact(fp32_artifact, tmp_path / "few", tmp_path / "out", resolution=64)


def test_quantize_cli(fp32_artifact, tmp_path):
    run = subprocess.run([sys.executable, "-m", "pocketgan", "quantize", str(fp32_artifact), "--calibration-images", str(IMAGES),
                          "--out", str(tmp_path / "q"), "--resolution", "32", "--n-calibration", "4", "--n-holdout", "2"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "PSNR to fp32" in run.stdout
    again = read_artifact_dir(tmp_path / "q")
    assert again.architecture.precision == "int8"
    int8_of_int8 = subprocess.run([sys.executable, "-m", "pocketgan", "quantize", str(tmp_path / "q"), "--calibration-images",
                                   str(IMAGES), "--out", str(tmp_path / "qq"), "--resolution", "32"], capture_output=True, text=True)
    assert int8_of_int8.returncode == 2 and "not an fp32 artifact" in int8_of_int8.stderr
