"""ONNX export: dynamic shapes, parity with PyTorch at two resolutions, failing parity is fatal, artifact dirs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compression_jobs.counting import count_macs, count_params
from compression_jobs.export import ExportParityError, export_artifact, export_onnx
from compression_jobs.models import mobile_resnet_generator, resnet_generator, unet_generator
from registry.artifact import read_artifact_dir
from registry.runtime import META_SIZE_MULTIPLE, OnnxGenerator

torch.set_num_threads(1)


def _torch_vs_ort(model: nn.Module, path, shape) -> float:
    x = torch.rand(shape) * 2 - 1
    with torch.no_grad():
        expected = model(x.clone()).numpy()
    got = OnnxGenerator(path, providers=["CPUExecutionProvider"], intra_op_threads=1).run(x.numpy())
    return float(np.abs(got - expected).max())


@pytest.mark.parametrize(
    "name,build,exporter,other_shape",
    [
        ("mobile", lambda: mobile_resnet_generator("8_8_16_8_16_16_8_8", n_blocks=3), "auto", (3, 3, 40, 24)),
        ("resnet", lambda: resnet_generator(ngf=8, n_blocks=2, norm="batch"), "torchscript", (1, 3, 36, 52)),
        ("unet", lambda: unet_generator(num_downs=5, ngf=8, norm="instance"), "torchscript", (2, 3, 32, 96)),
    ],
)
def test_export_parity_at_two_resolutions_and_dynamic_shapes(tmp_path, name, build, exporter, other_shape):
    torch.manual_seed(0)
    model = build().eval()
    path = tmp_path / name / "model.onnx"
    info = export_onnx(model, path, resolution=64, exporter=exporter)
    assert len(info.parity_max_abs_diff) == 2  # export resolution + one other (batch 2, non-square)
    assert all(d <= 1e-4 for d in info.parity_max_abs_diff.values())
    if exporter == "auto":
        assert info.exporter == "dynamo", info.attempts  # the new exporter handles our generators
    # dynamic batch/height/width really are dynamic: a shape never seen at export time
    assert _torch_vs_ort(model, path, other_shape) <= 1e-4
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta[META_SIZE_MULTIPLE] == str(model.size_multiple)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [0, 3, 0, 0]  # symbolic N, H, W


class _PythonStateModel(nn.Module):
    """Reads Python state at call time: tracing freezes it, so ONNX cannot reproduce later calls."""

    size_multiple = 4
    input_nc = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(self.conv(x)) * (1.0 + 0.1 * self.calls)


@pytest.mark.parametrize("exporter", ["auto", "torchscript"])
def test_export_fails_and_leaves_no_file_when_parity_breaks(tmp_path, exporter):
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportParityError, match="parity failed"):
        export_onnx(_PythonStateModel(), path, resolution=16, exporter=exporter)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_tolerance_is_enforced(tmp_path):
    model = mobile_resnet_generator("8_8_16_8_16_16_8_8", n_blocks=3).eval()
    with pytest.raises(ExportParityError):
        export_onnx(model, tmp_path / "m.onnx", resolution=32, exporter="torchscript", atol=-1e-12)  # nothing can meet a negative tolerance
    assert not (tmp_path / "m.onnx").exists()


def test_export_artifact_writes_a_verified_manifest(tmp_path):
    model = mobile_resnet_generator("8_8_16_8_16_16_8_8", n_blocks=3)
    manifest = export_artifact(model, tmp_path / "art", task="facades-label2photo", method="gan-compression",
                               parent="teacher-x", exporter="torchscript", job={"lr": 0.0002})
    again = read_artifact_dir(tmp_path / "art", verify=True)
    assert again == manifest
    arch = manifest.architecture
    assert (arch.family, arch.channel_config, arch.n_blocks, arch.precision) == ("mobile-resnet", "8_8_16_8_16_16_8_8", 3, "fp32")
    assert arch.macs == count_macs(model, 256) and arch.params == count_params(model)
    assert arch.onnx_opset and arch.file_bytes == (tmp_path / "art" / "model.onnx").stat().st_size
    assert manifest.job["export"]["exporter"] == "torchscript" and manifest.job["lr"] == 0.0002
    assert manifest.parent == "teacher-x" and manifest.method == "gan-compression"


def test_export_cli_teacher_and_student(tmp_path):
    teacher = resnet_generator(ngf=8, n_blocks=2)
    torch.save({"module." + k: v for k, v in teacher.state_dict().items()}, tmp_path / "latest_net_G.pth")
    cmd = [sys.executable, "-m", "pocketgan", "export", "--teacher", str(tmp_path / "latest_net_G.pth"), "--arch", "resnet",
           "--task", "facades-label2photo", "--out", str(tmp_path / "teacher"), "--exporter", "torchscript"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    m = read_artifact_dir(tmp_path / "teacher")
    assert m.method == "teacher" and m.architecture.ngf == 8 and m.architecture.n_blocks == 2
    again = subprocess.run(cmd, capture_output=True, text=True)  # never overwrite an artifact
    assert again.returncode == 2 and "already holds an artifact" in again.stderr

    student = mobile_resnet_generator("8_8_16_8_16_16_8_8", n_blocks=3)
    torch.save(student.state_dict(), tmp_path / "student.pth")
    base = [sys.executable, "-m", "pocketgan", "export", "--student-config", "8_8_16_8_16_16_8_8", "--n-blocks", "3",
            "--weights", str(tmp_path / "student.pth"), "--task", "facades-label2photo", "--exporter", "torchscript"]
    run = subprocess.run(base + ["--method", "gan-compression", "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert read_artifact_dir(tmp_path / "s").architecture.channel_config == "8_8_16_8_16_16_8_8"
    wrong = subprocess.run(base[:5] + ["8_8_16_8_16_16_8_16"] + base[6:] + ["--method", "x", "--out", str(tmp_path / "w")],
                           capture_output=True, text=True)
    assert wrong.returncode == 2 and "shape mismatches" in wrong.stderr


def test_exported_graph_carries_no_build_machine_paths_and_is_reproducible(tmp_path):
    """The exporter records a stack trace with absolute source paths on every node; artifacts must not
    ship it, and the same weights must give the same bytes (the artifact id) wherever they are exported."""
    torch.manual_seed(0)
    model = mobile_resnet_generator("8_16_16_16_16_16_16_8").eval()
    a, b = tmp_path / "a" / "model.onnx", tmp_path / "elsewhere" / "deeper" / "model.onnx"
    for path in (a, b):
        path.parent.mkdir(parents=True)
        export_onnx(model, path, resolution=32)
    data = a.read_bytes()
    assert data == b.read_bytes()
    proto = onnx.load(str(a))
    assert all(len(n.metadata_props) == 0 and not n.doc_string for n in proto.graph.node)
    repo = str(Path(__file__).resolve().parents[1]).encode()
    assert repo not in data and b"site-packages" not in data and b"stack_trace" not in data
    assert {p.key for p in proto.metadata_props} >= {META_SIZE_MULTIPLE}  # our own metadata stays
