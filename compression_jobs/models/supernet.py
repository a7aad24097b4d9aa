"""Once-for-all supernet over the mobile ResNet design space.

One set of shared weights at the maximum widths. A channel config selects a sub-network by
SLICING: every conv uses ``weight[:out, :in]`` (transposed convs ``weight[:in, :out]``,
depthwise convs ``weight[:c]``) — views of the shared tensors, no copies, so training any
sub-network trains the shared weights. ``extract(config)`` copies the slices into a standalone
:class:`MobileResnetGenerator` whose outputs equal the sliced supernet's.

Norms are InstanceNorm without affine parameters, which work at any width unchanged.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compression_jobs.models.mobile import (
    N_CHANNELS,
    ChannelConfig,
    MobileResnetGenerator,
    build_mobile_layers,
)

Rng = random.Random | np.random.Generator
DEFAULT_MULTIPLIERS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)


class ElasticConv2d(nn.Conv2d):
    """Conv2d running on the first ``active_out`` output and first ``x.shape[1]`` input channels."""

    active_out: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[1]
        if self.groups == 1:
            out = self.out_channels if self.active_out is None else self.active_out
            weight, groups = self.weight[:out, :cin], 1
        else:  # depthwise: one filter per input channel
            if not (self.groups == self.in_channels == self.out_channels):
                raise ValueError("ElasticConv2d supports groups=1 or depthwise convolutions only")
            out, weight, groups = cin, self.weight[:cin], cin
        bias = None if self.bias is None else self.bias[:out]
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class ElasticConvTranspose2d(nn.ConvTranspose2d):
    """ConvTranspose2d on the first ``x.shape[1]`` input and first ``active_out`` output channels."""

    active_out: int | None = None

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:  # noqa: ARG002
        cin = x.shape[1]
        out = self.out_channels if self.active_out is None else self.active_out
        weight = self.weight[:cin, :out]  # ConvTranspose weight is (in, out/groups, kh, kw)
        bias = None if self.bias is None else self.bias[:out]
        return F.conv_transpose2d(
            x, weight, bias, self.stride, self.padding, self.output_padding, 1, self.dilation
        )


class ElasticInstanceNorm2d(nn.InstanceNorm2d):
    """InstanceNorm without affine/running stats at whatever width arrives (no size warning)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, eps=self.eps)


def elastic_instance_norm(channels: int) -> ElasticInstanceNorm2d:
    """The supernet's norm (affine=False: nothing to slice, so any width that arrives is fine)."""
    return ElasticInstanceNorm2d(channels, affine=False, track_running_stats=False)


@dataclass(frozen=True)
class ChannelSpace:
    """The choices per config slot (ascending widths, each a multiple of 8 and <= the max width)."""

    max_config: ChannelConfig
    choices: tuple[tuple[int, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.choices:
            object.__setattr__(self, "choices", tuple((w,) for w in self.max_config))
        if len(self.choices) != N_CHANNELS:
            raise ValueError(f"a channel space needs choices for {N_CHANNELS} slots")
        for i, (opts, mx) in enumerate(zip(self.choices, self.max_config)):
            if not opts or any(o <= 0 or o % 8 or o > mx for o in opts):
                raise ValueError(f"slot {i}: choices {opts} must be multiples of 8 in [8, {mx}]")

    @classmethod
    def from_multipliers(cls, max_config: ChannelConfig | str | Sequence[int],
                         multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> "ChannelSpace":
        """Per slot: each multiplier times the max width, rounded to a multiple of 8 (at least 8)."""
        mx = ChannelConfig.parse(max_config)
        choices = tuple(
            tuple(sorted({min(w, max(8, int(round(m * w / 8)) * 8)) for m in multipliers})) for w in mx
        )
        return cls(mx, choices)

    @property
    def size(self) -> int:
        return math.prod(len(c) for c in self.choices)

    def largest(self) -> ChannelConfig:
        return ChannelConfig(tuple(c[-1] for c in self.choices))

    def smallest(self) -> ChannelConfig:
        return ChannelConfig(tuple(c[0] for c in self.choices))

    def contains(self, config: ChannelConfig | str | Sequence[int]) -> bool:
        cfg = ChannelConfig.parse(config)
        return all(w in opts for w, opts in zip(cfg, self.choices))

    def validate(self, config: ChannelConfig | str | Sequence[int]) -> ChannelConfig:
        cfg = ChannelConfig.parse(config)
        for i, (w, opts) in enumerate(zip(cfg, self.choices)):
            if w not in opts:
                raise ValueError(f"config {cfg}: width {w} at slot {i} is not one of {opts}")
        return cfg

    def sample(self, rng: Rng) -> ChannelConfig:
        """A uniformly random config."""
        return ChannelConfig(tuple(int(rng.choice(list(opts))) for opts in self.choices))

    def mutate(self, config: ChannelConfig | str | Sequence[int], rng: Rng, prob: float = 0.2) -> ChannelConfig:
        """Resample each slot with probability `prob` (evolutionary search)."""
        cfg = self.validate(config)
        return ChannelConfig(
            tuple(int(rng.choice(list(opts))) if rng.random() < prob else w for w, opts in zip(cfg, self.choices))
        )

    def crossover(self, a: ChannelConfig, b: ChannelConfig, rng: Rng) -> ChannelConfig:
        """Each slot from `a` or `b` with equal probability."""
        return ChannelConfig(tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b)))

    def all_configs(self) -> Iterator[ChannelConfig]:
        """Every config in the space (lazy; `size` says how many)."""
        for combo in itertools.product(*self.choices):
            yield ChannelConfig(combo)


class SuperMobileResnetGenerator(nn.Module):
    """The mobile ResNet at its maximum widths, with elastic (slicing) convolutions."""

    size_multiple = 4

    def __init__(self, space: ChannelSpace, n_blocks: int = 9, input_nc: int = 3, output_nc: int = 3) -> None:
        super().__init__()
        self.space, self.n_blocks, self.input_nc, self.output_nc = space, n_blocks, input_nc, output_nc
        self.norm = "instance"
        self.model, self._slots = build_mobile_layers(
            space.max_config, input_nc=input_nc, output_nc=output_nc, n_blocks=n_blocks, norm="instance",
            conv=ElasticConv2d, conv_t=ElasticConvTranspose2d, make_norm=elastic_instance_norm,
        )
        self.active: ChannelConfig = space.max_config

    def configure(self, config: ChannelConfig | str | Sequence[int]) -> ChannelConfig:
        """Make `config` the active sub-network for following forward calls."""
        cfg = ChannelConfig.parse(config)
        for w, mx in zip(cfg, self.space.max_config):
            if w > mx:
                raise ValueError(f"config {cfg} exceeds the supernet's max widths {self.space.max_config}")
        for module, idx in self._slots:
            module.active_out = cfg[idx]  # type: ignore[union-attr]
        self.active = cfg
        return cfg

    def forward(self, x: torch.Tensor, config: ChannelConfig | str | Sequence[int] | None = None) -> torch.Tensor:
        if config is not None:
            self.configure(config)
        return self.model(x)

    def sample_config(self, rng: Rng) -> ChannelConfig:
        return self.space.sample(rng)

    @torch.no_grad()
    def extract(self, config: ChannelConfig | str | Sequence[int]) -> MobileResnetGenerator:
        """A standalone student holding copies of the sliced weights (same outputs as the slice)."""
        cfg = ChannelConfig.parse(config)
        self.configure(cfg)  # validates widths
        student = MobileResnetGenerator(cfg, n_blocks=self.n_blocks, norm="instance",
                                        input_nc=self.input_nc, output_nc=self.output_nc)
        source = self.state_dict()
        target = {}
        for name, tensor in student.state_dict().items():
            src = source[name]
            target[name] = src[tuple(slice(0, s) for s in tensor.shape)].clone()
        student.load_state_dict(target, strict=True)
        return student.train(self.training)


def supernet(
    ngf: int = 64,
    n_blocks: int = 9,
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
    max_config: ChannelConfig | str | Sequence[int] | None = None,
    input_nc: int = 3,
    output_nc: int = 3,
) -> SuperMobileResnetGenerator:
    """A supernet whose max widths are ``ChannelConfig.full(ngf)`` (or `max_config`)."""
    mx = ChannelConfig.parse(max_config) if max_config is not None else ChannelConfig.full(ngf)
    return SuperMobileResnetGenerator(ChannelSpace.from_multipliers(mx, multipliers), n_blocks, input_nc, output_nc)


def sample_config(space: ChannelSpace, rng: Rng) -> ChannelConfig:
    """A uniformly random config from `space`."""
    return space.sample(rng)
