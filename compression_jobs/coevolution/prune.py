"""Channel pruning of the ResNet teacher generator: binary codes → a compact (really smaller) network.

Which output channels are prunable (one bit each), as named groups of ``ResnetGenerator``:

- ``stem``   the 7x7 input conv (ngf)
- ``down1``  the first stride-2 conv (2 ngf)
- ``stream`` the residual stream (4 ngf): the second stride-2 conv's output *and* every residual
  block's output; one mask shared by all blocks (the additions need equal widths). Optional
  (``prune_stream``); without it the stream keeps its full width.
- ``block<i>`` the inner (middle) channels of residual block i — each block its own mask
- ``up1``, ``up2`` the two transposed convs

The last 7x7 conv (output image channels) is never pruned. A pruned channel is removed from the
conv that makes it (and its norm) and from the input of every conv that reads it, so the result
is a ``ResnetGenerator`` with narrower weight tensors — not a masked one. With an affine-free
InstanceNorm (or BatchNorm in eval mode) a channel's normalisation depends only on itself, so the
compact network computes exactly what the full network computes with those channels zeroed
after their norm/ReLU (``masked``), which the tests check.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from pydantic import BaseModel, Field
from torch import nn

from compression_jobs.models.resnet import ResnetGenerator

Masks = dict[str, torch.Tensor]
"""Group name → bool tensor (True = keep) with one entry per channel of that group."""


class PrunedWidths(BaseModel):
    """Kept channels per group; ``str()`` is the manifest's ``channel_config``:
    ``stem_down1_stream_block0_…_blockN-1_up1_up2``."""

    stem: int = Field(ge=1)
    down1: int = Field(ge=1)
    stream: int = Field(ge=1)
    blocks: list[int]
    up1: int = Field(ge=1)
    up2: int = Field(ge=1)

    def __str__(self) -> str:
        return "_".join(str(w) for w in (self.stem, self.down1, self.stream, *self.blocks, self.up1, self.up2))

    @classmethod
    def parse(cls, text: str) -> "PrunedWidths":
        w = [int(p) for p in text.split("_")]
        if len(w) < 5:
            raise ValueError(f"channel config {text!r} needs at least 5 widths")
        return cls(stem=w[0], down1=w[1], stream=w[2], blocks=w[3:-2], up1=w[-2], up2=w[-1])


def _check(net: nn.Module) -> ResnetGenerator:
    if not isinstance(net, ResnetGenerator):
        raise TypeError(f"co-evolutionary pruning needs the ResNet teacher generator, got {type(net).__name__}")
    return net


def _layout(net: ResnetGenerator) -> dict[str, int]:
    """Indices into ``net.model`` (see compression_jobs/models/resnet.py for the fixed layout)."""
    n = net.n_blocks
    return {"stem": 1, "down1": 4, "down2": 7, "block0": 10, "up1": 10 + n, "up2": 13 + n, "last": 17 + n}


class ChannelGroups:
    """The bit layout of a code for one generator: group names, sizes, and code ↔ masks."""

    def __init__(self, net: nn.Module, prune_stream: bool = True):
        net = _check(net)
        m, lay = net.model, _layout(net)
        self.n_blocks = net.n_blocks
        self.prune_stream = prune_stream
        self.full = PrunedWidths(
            stem=m[lay["stem"]].out_channels, down1=m[lay["down1"]].out_channels, stream=m[lay["down2"]].out_channels,
            blocks=[m[lay["block0"] + i].conv_block[1].out_channels for i in range(net.n_blocks)],
            up1=m[lay["up1"]].out_channels, up2=m[lay["up2"]].out_channels,
        )
        sizes = {"stem": self.full.stem, "down1": self.full.down1}
        if prune_stream:
            sizes["stream"] = self.full.stream
        sizes.update({f"block{i}": w for i, w in enumerate(self.full.blocks)})
        sizes.update({"up1": self.full.up1, "up2": self.full.up2})
        self.sizes = sizes

    @property
    def n_bits(self) -> int:
        return sum(self.sizes.values())

    def masks(self, code: torch.Tensor | list[int]) -> Masks:
        """Split a code (one bit per prunable channel) into per-group keep masks."""
        code = torch.as_tensor(code, dtype=torch.bool).flatten()
        if code.numel() != self.n_bits:
            raise ValueError(f"code has {code.numel()} bits, this generator has {self.n_bits}")
        out, start = {}, 0
        for name, size in self.sizes.items():
            out[name] = code[start : start + size]
            start += size
        if not self.prune_stream:
            out["stream"] = torch.ones(self.full.stream, dtype=torch.bool)
        return out

    def repair(self, code: torch.Tensor) -> torch.Tensor:
        """Keep at least one channel per group (an empty layer cannot be built or exported)."""
        code = torch.as_tensor(code, dtype=torch.bool).clone()
        start = 0
        for size in self.sizes.values():
            if not code[start : start + size].any():
                code[start] = True
            start += size
        return code

    def widths(self, masks: Masks) -> PrunedWidths:
        return PrunedWidths(
            stem=int(masks["stem"].sum()), down1=int(masks["down1"].sum()), stream=int(masks["stream"].sum()),
            blocks=[int(masks[f"block{i}"].sum()) for i in range(self.n_blocks)],
            up1=int(masks["up1"].sum()), up2=int(masks["up2"].sum()),
        )

    def first_k(self, widths: PrunedWidths) -> Masks:
        """Masks keeping the first k channels of each group (to rebuild a pruned shape before loading weights)."""
        def keep(k: int, n: int) -> torch.Tensor:
            if not 1 <= k <= n:
                raise ValueError(f"width {k} outside 1..{n}")
            return torch.arange(n) < k

        f = self.full
        if len(widths.blocks) != len(f.blocks):
            raise ValueError(f"{len(widths.blocks)} block widths for a generator with {len(f.blocks)} blocks")
        if not self.prune_stream and widths.stream != f.stream:
            raise ValueError("stream width differs but prune_stream is off")
        out = {"stem": keep(widths.stem, f.stem), "down1": keep(widths.down1, f.down1),
               "stream": keep(widths.stream, f.stream), "up1": keep(widths.up1, f.up1), "up2": keep(widths.up2, f.up2)}
        out.update({f"block{i}": keep(w, n) for i, (w, n) in enumerate(zip(widths.blocks, f.blocks))})
        return out


def _idx(mask: torch.Tensor | None, n: int) -> torch.Tensor:
    return torch.arange(n) if mask is None else torch.nonzero(mask, as_tuple=False).flatten()


def _slice_conv(conv: nn.Module, in_keep: torch.Tensor | None, out_keep: torch.Tensor | None) -> nn.Module:
    """A new Conv2d/ConvTranspose2d holding only the kept input/output channels' weights."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    i = _idx(in_keep, conv.in_channels)
    o = _idx(out_keep, conv.out_channels)
    kw = dict(kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding, bias=conv.bias is not None)
    if transposed:
        new = nn.ConvTranspose2d(len(i), len(o), output_padding=conv.output_padding, **kw)
        w = conv.weight.detach()[i][:, o]
    else:
        new = nn.Conv2d(len(i), len(o), **kw)
        w = conv.weight.detach()[o][:, i]
    new.weight = nn.Parameter(w.clone())
    if conv.bias is not None:
        new.bias = nn.Parameter(conv.bias.detach()[o].clone())
    return new


def _slice_norm(norm: nn.Module, keep: torch.Tensor) -> nn.Module:
    """InstanceNorm/BatchNorm restricted to the kept channels (affine params and running stats sliced)."""
    if isinstance(norm, nn.Identity):
        return nn.Identity()
    k = _idx(keep, norm.num_features)
    new = copy.deepcopy(norm)
    new.num_features = len(k)
    for name in ("weight", "bias"):
        p = getattr(norm, name, None)
        if p is not None:
            setattr(new, name, nn.Parameter(p.detach()[k].clone()))
    for name in ("running_mean", "running_var"):
        b = getattr(norm, name, None)
        if b is not None:
            setattr(new, name, b.detach()[k].clone())
    return new


def prune_generator(net: nn.Module, masks: Masks) -> ResnetGenerator:
    """A compact copy of `net` with only the kept channels (weights sliced, modules rebuilt).

    The copy is still a ``ResnetGenerator`` (same module names and forward), so state-dict keys,
    ONNX export and MACs counting work unchanged; ``.config`` holds its :class:`PrunedWidths`.
    """
    net = _check(net)
    groups = ChannelGroups(net, prune_stream=True)
    out = copy.deepcopy(net)
    m, lay = out.model, _layout(out)
    stem, down1, stream, up1, up2 = (masks[k] for k in ("stem", "down1", "stream", "up1", "up2"))

    def conv_norm(seq: nn.Sequential, pos: int, in_keep: torch.Tensor | None, out_keep: torch.Tensor) -> None:
        seq[pos] = _slice_conv(seq[pos], in_keep, out_keep)
        seq[pos + 1] = _slice_norm(seq[pos + 1], out_keep)

    conv_norm(m, lay["stem"], None, stem)
    conv_norm(m, lay["down1"], stem, down1)
    conv_norm(m, lay["down2"], down1, stream)
    for b in range(out.n_blocks):
        cb = m[lay["block0"] + b].conv_block
        inner = masks[f"block{b}"]
        conv_norm(cb, 1, stream, inner)
        conv_norm(cb, len(cb) - 2, inner, stream)  # pad, conv, norm at the end (a dropout may sit in between)
    conv_norm(m, lay["up1"], stream, up1)
    conv_norm(m, lay["up2"], up1, up2)
    m[lay["last"]] = _slice_conv(m[lay["last"]], up2, None)
    out.config = groups.widths(masks)  # type: ignore[attr-defined]  # read by export.architecture_of
    out.ngf = out.config.stem
    return out


def build_pruned(teacher_template: nn.Module, widths: PrunedWidths | str) -> ResnetGenerator:
    """An (untrained) compact generator of the given widths, to load a saved pruned state dict into."""
    w = PrunedWidths.parse(widths) if isinstance(widths, str) else widths
    groups = ChannelGroups(teacher_template, prune_stream=True)
    return prune_generator(teacher_template, groups.first_k(w))


def _mask_hook(keep: torch.Tensor):
    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * keep.to(output.dtype).view(1, -1, 1, 1)

    return hook


@contextlib.contextmanager
def masked(net: nn.Module, masks: Masks) -> Iterator[nn.Module]:
    """`net` with the pruned channels zeroed after their norm/ReLU (forward hooks), for comparison."""
    net = _check(net)
    m, lay = net.model, _layout(net)
    targets: list[tuple[nn.Module, torch.Tensor]] = [
        (m[lay["stem"] + 2], masks["stem"]), (m[lay["down1"] + 2], masks["down1"]),
        (m[lay["down2"] + 2], masks["stream"]), (m[lay["up1"] + 2], masks["up1"]), (m[lay["up2"] + 2], masks["up2"]),
    ]
    for b in range(net.n_blocks):
        cb = m[lay["block0"] + b].conv_block
        targets += [(cb[3], masks[f"block{b}"]), (cb, masks["stream"])]
    handles = [mod.register_forward_hook(_mask_hook(keep)) for mod, keep in targets]
    try:
        yield net
    finally:
        for h in handles:
            h.remove()


def _norm_or_filter_score(conv: nn.Module, norm: nn.Module) -> torch.Tensor:
    """Per output channel: |scale| of an affine norm (what the channel contributes after normalisation),
    else the L1 norm of the conv filter (Li et al. 2017, "Pruning Filters for Efficient ConvNets")."""
    w = getattr(norm, "weight", None)
    if w is not None:
        return w.detach().abs()
    weight = conv.weight.detach()
    dims = (0, 2, 3) if isinstance(conv, nn.ConvTranspose2d) else (1, 2, 3)
    return weight.abs().sum(dims)


def channel_scores(net: nn.Module) -> dict[str, torch.Tensor]:
    """Importance of every prunable channel, per group (the stream: summed over all its producers)."""
    net = _check(net)
    m, lay = net.model, _layout(net)
    scores = {name: _norm_or_filter_score(m[lay[name]], m[lay[name] + 1]) for name in ("stem", "down1", "up1", "up2")}
    stream = _norm_or_filter_score(m[lay["down2"]], m[lay["down2"] + 1]).clone()
    for b in range(net.n_blocks):
        cb = m[lay["block0"] + b].conv_block
        scores[f"block{b}"] = _norm_or_filter_score(cb[1], cb[2])
        stream += _norm_or_filter_score(cb[len(cb) - 2], cb[len(cb) - 1])
    scores["stream"] = stream
    return scores


def magnitude_masks(net: nn.Module, keep: float) -> Masks:
    """Keep the top `keep` fraction (at least one) of every group's channels by :func:`channel_scores`."""
    out = {}
    for name, s in channel_scores(net).items():
        k = max(1, min(len(s), int(round(keep * len(s)))))
        mask = torch.zeros(len(s), dtype=torch.bool)
        mask[torch.topk(s, k).indices] = True
        out[name] = mask
    return out


def magnitude_prune(net: nn.Module, budget_macs: float, resolution: int = 256) -> ResnetGenerator:
    """The compact generator with the largest uniform keep fraction whose MACs at `resolution` fit the
    budget: channels ranked by magnitude, weights kept (a warm start for distillation, no search)."""
    from compression_jobs.counting import count_macs

    probe = 32  # conv MACs scale exactly with the area: count small, scale up
    scale = (resolution / probe) ** 2

    def macs(keep: float) -> float:
        return count_macs(prune_generator(net, magnitude_masks(net, keep)), probe) * scale

    lo, hi = 0.0, 1.0
    if macs(1.0) <= budget_macs:
        return prune_generator(net, magnitude_masks(net, 1.0))
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs(mid) <= budget_macs else (lo, mid)
    return prune_generator(net, magnitude_masks(net, max(lo, 1e-6)))
