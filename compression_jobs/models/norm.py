"""Normalisation choices shared by every generator, named like the pix2pix/CycleGAN code.

- ``instance``: InstanceNorm2d(affine=False, track_running_stats=False) — the original default;
  it has no parameters and no buffers, so a checkpoint has no keys for it.
- ``instance-affine``: InstanceNorm2d(affine=True) — a scale and shift per channel (the
  vintagify CycleGAN teacher uses this).
- ``batch``: BatchNorm2d(affine=True, track_running_stats=True) — the pix2pix default.
- ``none``: Identity.

Convolutions followed by a norm carry a bias exactly when the norm is an InstanceNorm (the
original ``use_bias = norm_layer == nn.InstanceNorm2d`` rule), so state-dict keys match.
"""

from __future__ import annotations

from typing import Callable, Literal

from torch import nn

NormName = Literal["instance", "instance-affine", "batch", "none"]
NORMS: tuple[str, ...] = ("instance", "instance-affine", "batch", "none")


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """A factory ``channels -> module`` for the named norm."""
    if norm == "instance":
        return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    if norm == "instance-affine":
        return lambda c: nn.InstanceNorm2d(c, affine=True, track_running_stats=False)
    if norm == "batch":
        return lambda c: nn.BatchNorm2d(c, affine=True, track_running_stats=True)
    if norm == "none":
        return lambda c: nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def uses_bias(norm: str) -> bool:
    """The original rule: conv bias iff the following norm is an InstanceNorm (or there is none)."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    return norm in ("instance", "instance-affine", "none")
