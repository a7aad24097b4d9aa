"""Export-time rewrites that compute the same function with kernels ONNX Runtime's CPU EP runs faster.

Measured on a 2-core AVX-512 CPU (``benchmarks/latency_vs_macs.py`` prints it side by side): in
a small mobile student most of the time is not in the MACs but in two layer shapes that ORT
runs at a fraction of its dense-conv speed:

* ``ConvTranspose2d(k=3, s=2, p=1, output_padding=1)`` (the two upsampling layers): ORT's
  ConvTranspose is a GEMM followed by col2im, single pass, no NCHWc kernel. The same map is a
  2x2 convolution with 4x the output channels followed by ``pixel_shuffle`` (sub-pixel
  convolution; ONNX ``DepthToSpace``), which runs on ORT's NCHWc conv kernels.
* The final full-resolution 7x7 conv to 3 channels: ORT's NCHWc kernel computes output
  channels in blocks of 8/16, so 3 outputs cost as much as 16. As a stride-2 8x8 conv with
  4x the outputs at a quarter of the pixels, then ``pixel_shuffle(2)``, it computes 12 real
  outputs per block of 16 instead of 3.

Both rewrites are exact (same outputs up to float rounding; the export parity check proves it
per artifact) and change no trainable parameter count in the PyTorch model that is trained:
they are applied to a copy at export time (:func:`fast_inference_copy`). The rewritten
convolutions contain structural zeros, so they do more MACs than the originals; the manifest's
MACs stay those of the trained architecture (what the compression is measured by).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class SubPixelConvTranspose2d(nn.Module):
    """``ConvTranspose2d(k=3, s=2, p=1, output_padding=1)`` as 2x2 conv (4x outputs) + pixel_shuffle(2).

    Output pixel (2a+p, 2b+q) of the transposed conv reads input pixels (a+di, b+dj), di, dj in
    {0, 1}, with kernel tap ``k(p, d)``: k(0, 0) = 1, k(1, 0) = 2, k(1, 1) = 0, k(0, 1) unused.
    """

    def __init__(self, convt: nn.ConvTranspose2d) -> None:
        super().__init__()
        if not (convt.kernel_size == (3, 3) and convt.stride == (2, 2) and convt.padding == (1, 1)
                and convt.output_padding == (1, 1) and convt.groups == 1 and convt.dilation == (1, 1)):
            raise ValueError("SubPixelConvTranspose2d rewrites only ConvTranspose2d(3, stride 2, padding 1, output_padding 1)")
        w = convt.weight.detach()  # (in, out, 3, 3)
        cin, cout = w.shape[:2]
        tap = {(0, 0): 1, (1, 0): 2, (1, 1): 0}
        weight = torch.zeros(cout, 2, 2, cin, 2, 2, dtype=w.dtype)
        for (p, di), kh in tap.items():
            for (q, dj), kw in tap.items():
                weight[:, p, q, :, di, dj] = w[:, :, kh, kw].t()
        self.weight = nn.Parameter(weight.reshape(cout * 4, cin, 2, 2), requires_grad=False)
        bias = convt.bias.detach() if convt.bias is not None else None
        self.bias = None if bias is None else nn.Parameter(bias.repeat_interleave(4), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias)
        return F.pixel_shuffle(y, 2)


class SpaceToDepthConv2d(nn.Module):
    """A stride-1, unpadded, odd ``k x k`` conv as a stride-2 ``(k+1) x (k+1)`` conv with 4x outputs + pixel_shuffle(2).

    Output pixel (2a+p, 2b+q) is the original kernel shifted by (p, q) inside a (k+1)-wide frame,
    applied at input (2a, 2b). Needs an even input size (true for the 7x7 head after its
    reflection pad of 3 on sizes divisible by 4). A strided conv rather than pixel_unshuffle:
    the exporter writes pixel_unshuffle as a 6-D Transpose that costs as much as the conv.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        kh, kw = conv.kernel_size
        if not (kh == kw and kh % 2 == 1 and conv.stride == (1, 1) and conv.padding == (0, 0)
                and conv.groups == 1 and conv.dilation == (1, 1)):
            raise ValueError("SpaceToDepthConv2d rewrites only odd square, stride-1, unpadded, dense convolutions")
        w = conv.weight.detach()  # (out, in, k, k)
        cout, cin, k = w.shape[0], w.shape[1], kh
        weight = torch.zeros(cout, 2, 2, cin, k + 1, k + 1, dtype=w.dtype)
        for p in range(2):
            for q in range(2):
                weight[:, p, q, :, p:p + k, q:q + k] = w
        self.weight = nn.Parameter(weight.reshape(cout * 4, cin, k + 1, k + 1), requires_grad=False)
        bias = conv.bias.detach() if conv.bias is not None else None
        self.bias = None if bias is None else nn.Parameter(bias.repeat_interleave(4), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(F.conv2d(x, self.weight, self.bias, stride=2), 2)


def fast_inference_copy(model: nn.Module, *, upsample: bool = False, head: bool = True) -> nn.Module:
    """A deep copy of `model` (eval) with the rewrites above applied where their shapes match.

    `upsample`: stride-2 3x3 transposed convs -> sub-pixel convs (off by default: measured no faster
    on ORT's CPU EP, see benchmarks/latency_vs_macs.py). `head`: the last dense conv of kernel >= 5
    with fewer than 8 output channels -> space-to-depth conv.
    """
    out = copy.deepcopy(model).eval()
    # named_modules() is a pre-order walk: `slots` lists layers in forward order for sequential models
    slots = [(out.get_submodule(q.rpartition(".")[0]), q.rpartition(".")[2], m) for q, m in out.named_modules() if q]
    for parent, name, child in slots:
        if upsample and isinstance(child, nn.ConvTranspose2d):
            try:
                setattr(parent, name, SubPixelConvTranspose2d(child))
            except ValueError:  # another shape: keep the original layer
                pass
    convs = [slot for slot in slots if isinstance(slot[2], nn.Conv2d)]
    if head and convs:
        parent, name, conv = convs[-1]
        if conv.kernel_size[0] >= 5 and conv.out_channels < 8 and conv.groups == 1 and conv.stride == (1, 1) \
                and conv.padding == (0, 0):
            setattr(parent, name, SpaceToDepthConv2d(conv))
    return out
