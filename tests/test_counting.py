"""MAC/param counting against published figures and hand counts; the `pocketgan macs` CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from compression_jobs.counting import count_active_params, count_macs, count_params
from compression_jobs.models import ChannelConfig, mobile_resnet_generator, resnet_generator, supernet

torch.set_num_threads(1)


def test_cyclegan_resnet9_matches_published_figures():
    model = resnet_generator(ngf=64, n_blocks=9)
    macs, params = count_macs(model, 256), count_params(model)
    assert macs == pytest.approx(56.8e9, rel=0.01)  # GAN Compression, Table 1: CycleGAN 56.8G MACs
    assert params == pytest.approx(11.38e6, rel=0.01)  # 11.378 M
    # the strict convention counts transposed convs by input elements: only the 2 up layers differ
    assert count_macs(model, 256, transposed="exact") == pytest.approx(49.55e9, rel=0.01)


def test_counts_scale_with_resolution_and_batch():
    model = resnet_generator(ngf=8, n_blocks=2)
    assert count_macs(model, 64, 128) == 2 * count_macs(model, 64, 64)
    assert count_macs(model, 64, batch=3) == 3 * count_macs(model, 64)


def test_hand_counted_small_networks():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8), nn.ReLU())
    conv.input_nc = 3
    assert count_macs(conv, 10, 12) == 10 * 12 * 8 * 3 * 9
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    dw.input_nc = 8
    assert count_macs(dw, 10) == 10 * 10 * 8 * 1 * 9
    up = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)
    up.input_nc = 4
    assert count_macs(up, 5) == (10 * 10 * 2) * 4 * 9  # published: output elements x in x k^2
    assert count_macs(up, 5, transposed="exact") == (5 * 5 * 4) * 2 * 9


def test_supernet_counts_the_active_subnetwork():
    net = supernet(ngf=16, n_blocks=3)
    cfg = ChannelConfig.parse("8_16_32_16_32_48_16_8")
    student = net.extract(cfg)
    assert count_macs(net, 64, forward_kwargs={"config": cfg}) == count_macs(student, 64)
    assert count_active_params(net, 32, {"config": cfg}) == count_params(student)
    assert count_macs(net, 64, forward_kwargs={"config": net.space.largest()}) > count_macs(student, 64)
    assert count_params(mobile_resnet_generator(cfg, n_blocks=3)) == count_params(student)


def test_macs_cli_json():
    out = subprocess.run([sys.executable, "-m", "pocketgan", "macs", "--arch", "resnet", "--ngf", "64", "--n-blocks", "9",
                          "--size", "256", "--json"], capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    assert data["macs"] == pytest.approx(56.8e9, rel=0.01) and data["params"] == pytest.approx(11.38e6, rel=0.01)
    bad = subprocess.run([sys.executable, "-m", "pocketgan", "macs", "--arch", "mobile-resnet"], capture_output=True, text=True)
    assert bad.returncode == 2 and "needs --config" in bad.stderr


def test_cross_check_with_onnx_graph_counter(tmp_path):
    """Hook counts agree with registry/onnx_stats.py, which counts from the exported ONNX graph."""
    onnx_stats = pytest.importorskip("registry.onnx_stats").onnx_stats
    from compression_jobs.export import export_onnx

    model = mobile_resnet_generator("8_8_16_8_16_16_8_8", n_blocks=3)
    # dynamo (our default exporter): ONNX shape inference cannot see through the TorchScript
    # exporter's reflection-pad subgraph, so onnx_stats reports macs=None for those graphs
    export_onnx(model, tmp_path / "m.onnx", resolution=32, exporter="dynamo")
    stats = onnx_stats(tmp_path / "m.onnx", resolution=64)
    # the graph also holds InstanceNormalization's constant unit scale / zero bias initializers
    assert count_params(model) <= stats.params <= 1.02 * count_params(model)
    # both default to the published (torchprofile) convention; "exact" agrees too
    assert stats.macs == count_macs(model, 64)
    assert onnx_stats(tmp_path / "m.onnx", resolution=64, transposed="exact").macs == count_macs(model, 64, transposed="exact")


def _torchprofile_conv_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of convolutions and linear layers as torchprofile counts them (its other counts, e.g.
    norms and elementwise muls, are outside our convention)."""
    import warnings

    from torchprofile import profile_macs

    with warnings.catch_warnings():  # torch.jit.trace deprecation and "no handler" notes
        warnings.simplefilter("ignore")
        per_node = profile_macs(model.eval(), x, reduction=None)
    counted = ("aten::_convolution", "aten::linear", "aten::addmm", "aten::matmul")
    return sum(v for node, v in per_node.items() if node.operator in counted)


class _WithConfig(nn.Module):
    """torchprofile traces positional args only: bind the supernet's sub-network config."""

    def __init__(self, net: nn.Module, config: ChannelConfig) -> None:
        super().__init__()
        self.net, self.config = net, config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, config=self.config)


def test_cross_check_with_torchprofile():
    """The hook counter agrees exactly with torchprofile (the library GAN Compression used for its
    published figures) on every generator family, transposed convs and sub-networks included, at a
    non-square size."""
    from compression_jobs.models import unet_generator

    torch.manual_seed(0)
    net = supernet(ngf=16, n_blocks=3)
    cfg = ChannelConfig.parse("8_16_32_16_32_48_16_8")
    cases = [(resnet_generator(ngf=16, n_blocks=3), {}), (unet_generator(num_downs=6, ngf=8), {}),
             (mobile_resnet_generator("8_8_16_8_16_16_8_8", n_blocks=3), {}), (net, {"config": cfg})]
    for model, fwd in cases:
        h, w = (64, 64) if fwd or getattr(model, "size_multiple", 4) > 4 else (64, 96)
        ours = count_macs(model, h, w, forward_kwargs=fwd)
        traced = _WithConfig(model, cfg) if fwd else model
        assert ours == _torchprofile_conv_macs(traced, torch.zeros(1, 3, h, w)), type(model).__name__
