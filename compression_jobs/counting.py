"""Exact MACs and parameter counts via forward hooks, at any input resolution.

Convention (the published one used by GAN Compression / CycleGAN figures, e.g. 56.8 G MACs for
CycleGAN's ResNet-9 at 256x256): one multiply-accumulate per weight use in

- Conv2d:          output elements x (in_channels / groups) x kh x kw
- ConvTranspose2d: output elements x (in_channels / groups) x kh x kw — the convention of
  torchprofile, which GAN Compression used for its published figures. It counts the transposed
  conv as the dense conv over the zero-upsampled input. The strict multiply count (input elements x
  out_channels/groups x kh x kw) is available with ``transposed="exact"``; for CycleGAN's
  ResNet-9 at 256 it gives 49.6 G instead of the published 56.8 G (the two upsampling layers).
- Linear:          output elements x in_features

Biases, norms, activations, padding, additions and concatenations are NOT counted.
Elastic (supernet) convs are counted at the widths they actually ran with.
Params count every parameter of the module (the supernet: all shared weights).

Kept hand-written rather than replaced by torchprofile, after comparing the two: on every
generator family (ResNet, U-Net, mobile ResNet, a supernet sub-network) their convolution MACs agree
exactly (tests/test_counting.py::test_cross_check_with_torchprofile), but torchprofile needs
`torch.jit.trace` (deprecated in torch 2.x, positional inputs only, so a supernet config must be
bound in a wrapper), adds norm and elementwise-mul counts outside the published convention, has no
strict transposed-conv mode, and took 0.4-2 s per small model here where these hooks run one forward.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

CONVENTION = (
    "conv/linear: out_elems*in/groups*k*k; convtranspose: out_elems*in/groups*k*k (torchprofile, as published); "
    "norms, activations, padding, biases not counted"
)


class CostReport(BaseModel):
    """MACs and params of one architecture at one resolution."""

    arch: str
    height: int
    width: int
    batch: int = 1
    macs: int
    params: int
    convention: str = CONVENTION

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6


def _conv_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, transposed: str) -> int:
    x = inputs[0]
    kh, kw = module.kernel_size  # type: ignore[attr-defined]
    if isinstance(module, nn.ConvTranspose2d):
        if transposed == "exact":
            return x.numel() * (output.shape[1] // module.groups) * kh * kw
        return output.numel() * (x.shape[1] // module.groups) * kh * kw
    in_c = x.shape[1]
    groups = in_c if module.groups > 1 else 1  # elastic depthwise convs run with groups = active width
    return output.numel() * (in_c // groups) * kh * kw


@torch.no_grad()
def count_macs(model: nn.Module, height: int = 256, width: int | None = None, *, batch: int = 1,
               input_nc: int | None = None, forward_kwargs: dict[str, Any] | None = None,
               transposed: str = "published") -> int:
    """MACs of one forward pass on a zero input of shape (batch, input_nc, height, width).

    `transposed`: "published" (torchprofile / GAN Compression convention, default) or "exact".
    """
    if transposed not in ("published", "exact"):
        raise ValueError("transposed must be 'published' or 'exact'")
    width = height if width is None else width
    input_nc = input_nc or getattr(model, "input_nc", 3)
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            total += _conv_macs(module, inputs, output, transposed)
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(batch, input_nc, height, width), **(forward_kwargs or {}))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_active_params(model: nn.Module, height: int = 64, forward_kwargs: dict[str, Any] | None = None) -> int:
    """Params a forward pass actually uses (for a configured supernet: the sliced sub-network)."""
    used = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal used
        x = inputs[0]
        if isinstance(module, nn.ConvTranspose2d):
            in_c, out_c = x.shape[1], output.shape[1]
            used += in_c * out_c * module.kernel_size[0] * module.kernel_size[1] + (out_c if module.bias is not None else 0)
        elif isinstance(module, nn.Conv2d):
            in_c, out_c = x.shape[1], output.shape[1]
            per = 1 if module.groups > 1 else in_c
            used += out_c * per * module.kernel_size[0] * module.kernel_size[1] + (out_c if module.bias is not None else 0)
        elif isinstance(module, (nn.InstanceNorm2d, nn.BatchNorm2d)) and module.weight is not None:
            used += 2 * x.shape[1]

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.BatchNorm2d))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, getattr(model, "input_nc", 3), height, height), **(forward_kwargs or {}))
    finally:
        for h in handles:
            h.remove()
    return int(used)


def cost_report(model: nn.Module, arch: str, height: int = 256, width: int | None = None, *, batch: int = 1,
                forward_kwargs: dict[str, Any] | None = None) -> CostReport:
    width = height if width is None else width
    macs = count_macs(model, height, width, batch=batch, forward_kwargs=forward_kwargs)
    params = count_active_params(model, 64 if arch != "unet" else 2 ** getattr(model, "num_downs", 8),
                                 forward_kwargs) if forward_kwargs else count_params(model)
    return CostReport(arch=arch, height=height, width=width, batch=batch, macs=macs, params=params)
