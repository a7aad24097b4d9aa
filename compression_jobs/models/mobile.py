"""Student design space: GAN Compression's mobile ResNet generator with a per-layer channel config.

Same stem / downsampling / upsampling as the teacher ResNet; the residual blocks use
depthwise-separable convolutions (GAN Compression's ``SeparableConv2d``: depthwise 3x3 ->
norm -> pointwise 1x1). Every width is set by a :class:`ChannelConfig` of 8 entries, following
GAN Compression's ``SubMobileResnetGenerator`` layout::

    index  sets the output width of
    0      stem conv 7x7
    1      downsampling conv 1 (stride 2)
    2      downsampling conv 2 (stride 2) = the residual trunk width (input/output of every block)
    3      hidden width of residual blocks in group 1 (blocks 0 .. n//3-1)
    4      hidden width of residual blocks in group 2 (next n//3 blocks)
    5      hidden width of residual blocks in group 3 (the remaining blocks)
    6      transposed conv 1 (upsampling)
    7      transposed conv 2 (upsampling); the final 7x7 conv maps it to output_nc

String form joins them with ``_``: ``"16_16_32_16_32_32_16_16"``. Widths are multiples of 8.

Student norm: ``instance`` (no affine, no parameters), which the supernet can slice freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from compression_jobs.models.norm import norm_layer, uses_bias

N_CHANNELS = 8
CHANNEL_NAMES: tuple[str, ...] = ("stem", "down1", "down2", "block_g1", "block_g2", "block_g3", "up1", "up2")


@dataclass(frozen=True)
class ChannelConfig:
    """Eight layer widths (see module docstring for which layer each one sets)."""

    channels: tuple[int, ...]

    def __post_init__(self) -> None:
        ch = tuple(int(c) for c in self.channels)
        object.__setattr__(self, "channels", ch)
        if len(ch) != N_CHANNELS:
            raise ValueError(f"a channel config has {N_CHANNELS} widths ({'_'.join(CHANNEL_NAMES)}), got {len(ch)}")
        bad = [c for c in ch if c <= 0 or c % 8]
        if bad:
            raise ValueError(f"channel widths must be positive multiples of 8, got {bad} in {ch}")

    @classmethod
    def parse(cls, value: "ChannelConfig | str | Sequence[int]") -> "ChannelConfig":
        """Accept a ChannelConfig, ``"16_16_32_..."`` (``_``, ``,`` or ``-`` separated) or a list of ints."""
        if isinstance(value, ChannelConfig):
            return value
        if isinstance(value, str):
            parts = value.replace(",", "_").replace("-", "_").split("_")
            try:
                return cls(tuple(int(p) for p in parts if p.strip()))
            except ValueError as exc:
                raise ValueError(f"invalid channel config {value!r}: {exc}") from None
        return cls(tuple(value))

    @classmethod
    def full(cls, ngf: int) -> "ChannelConfig":
        """The widths of the full-size generator with base width ngf (teacher-shaped)."""
        return cls((ngf, 2 * ngf, 4 * ngf, 4 * ngf, 4 * ngf, 4 * ngf, 2 * ngf, ngf))

    def __str__(self) -> str:
        return "_".join(str(c) for c in self.channels)

    def __iter__(self):
        return iter(self.channels)

    def __getitem__(self, i: int) -> int:
        return self.channels[i]

    def as_dict(self) -> dict[str, int]:
        return dict(zip(CHANNEL_NAMES, self.channels))


def block_groups(n_blocks: int) -> list[int]:
    """Which hidden-width group (0, 1, 2) each residual block belongs to (GAN Compression split)."""
    g1 = n_blocks // 3
    g2 = n_blocks // 3
    return [0] * g1 + [1] * g2 + [2] * (n_blocks - g1 - g2)


class SeparableConv2d(nn.Module):
    """Depthwise kxk conv (groups=in) -> norm -> pointwise 1x1 conv, as in GAN Compression."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, norm: str = "instance",
                 conv: type[nn.Conv2d] = nn.Conv2d, make_norm: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        bias = uses_bias(norm)
        self.conv = nn.Sequential(  # positions are state-dict keys (conv.0 / conv.2): keep them
            conv(in_channels, in_channels, kernel_size, 1, 0, groups=in_channels, bias=bias),
            (make_norm or norm_layer(norm))(in_channels),
            conv(in_channels, out_channels, 1, 1, 0, bias=bias),
        )

    @property
    def pointwise(self) -> nn.Conv2d:
        """The 1x1 conv that sets this layer's output width."""
        return self.conv[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MobileResnetBlock(nn.Module):
    """x + [pad, sep(dim->hidden), norm, ReLU, pad, sep(hidden->dim), norm](x)."""

    def __init__(self, dim: int, hidden: int, norm: str = "instance", conv: type[nn.Conv2d] = nn.Conv2d,
                 make_norm: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        make_norm = make_norm or norm_layer(norm)
        self.conv_block = nn.Sequential(  # positions are state-dict keys (conv_block.1 / .5): keep them
            nn.ReflectionPad2d(1),
            SeparableConv2d(dim, hidden, 3, norm, conv, make_norm),
            make_norm(hidden),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            SeparableConv2d(hidden, dim, 3, norm, conv, make_norm),
            make_norm(dim),
        )

    @property
    def expand(self) -> SeparableConv2d:
        """dim -> hidden: its pointwise conv sets the block's hidden width."""
        return self.conv_block[1]

    @property
    def project(self) -> SeparableConv2d:
        """hidden -> dim: its pointwise conv returns to the trunk width."""
        return self.conv_block[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def build_mobile_layers(
    widths: ChannelConfig,
    *,
    input_nc: int,
    output_nc: int,
    n_blocks: int,
    norm: str,
    conv: type[nn.Conv2d] = nn.Conv2d,
    conv_t: type[nn.ConvTranspose2d] = nn.ConvTranspose2d,
    make_norm: Callable[[int], nn.Module] | None = None,
) -> tuple[nn.Sequential, list[tuple[nn.Module, int]]]:
    """The layer stack plus, for each width-setting conv, the config index that sets it.

    Shared by the student and the supernet so that their state-dict keys are identical,
    which is what lets ``supernet.extract`` copy weights by name. `make_norm` replaces the norm
    named by `norm` (the supernet's width-agnostic instance norm); `norm` still sets conv biases.
    """
    make_norm = make_norm or norm_layer(norm)
    bias = uses_bias(norm)
    slots: list[tuple[nn.Module, int]] = []
    c = widths.channels

    def add(module: nn.Module, idx: int) -> nn.Module:
        slots.append((module, idx))
        return module

    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        add(conv(input_nc, c[0], 7, 1, 0, bias=bias), 0),
        make_norm(c[0]),
        nn.ReLU(True),
        add(conv(c[0], c[1], 3, 2, 1, bias=bias), 1),
        make_norm(c[1]),
        nn.ReLU(True),
        add(conv(c[1], c[2], 3, 2, 1, bias=bias), 2),
        make_norm(c[2]),
        nn.ReLU(True),
    ]
    for group in block_groups(n_blocks):
        block = MobileResnetBlock(c[2], c[3 + group], norm, conv, make_norm)
        slots.append((block.expand.pointwise, 3 + group))
        slots.append((block.project.pointwise, 2))
        layers.append(block)
    layers += [
        add(conv_t(c[2], c[6], 3, 2, 1, output_padding=1, bias=bias), 6),
        make_norm(c[6]),
        nn.ReLU(True),
        add(conv_t(c[6], c[7], 3, 2, 1, output_padding=1, bias=bias), 7),
        make_norm(c[7]),
        nn.ReLU(True),
        nn.ReflectionPad2d(3),
        conv(c[7], output_nc, 7, 1, 0),
        nn.Tanh(),
    ]
    return nn.Sequential(*layers), slots


class MobileResnetGenerator(nn.Module):
    """A compact student generator; exported to ONNX and served."""

    size_multiple = 4

    def __init__(
        self,
        config: ChannelConfig | str | Sequence[int],
        n_blocks: int = 9,
        norm: str = "instance",
        input_nc: int = 3,
        output_nc: int = 3,
    ) -> None:
        super().__init__()
        self.config = ChannelConfig.parse(config)
        self.n_blocks, self.norm, self.input_nc, self.output_nc = n_blocks, norm, input_nc, output_nc
        self.model, _ = build_mobile_layers(
            self.config, input_nc=input_nc, output_nc=output_nc, n_blocks=n_blocks, norm=norm
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def mobile_resnet_generator(
    config: ChannelConfig | str | Iterable[int],
    n_blocks: int = 9,
    norm: str = "instance",
    input_nc: int = 3,
    output_nc: int = 3,
) -> MobileResnetGenerator:
    """A student with the given channel config (8 widths, see module docstring)."""
    cfg = config if isinstance(config, (ChannelConfig, str)) else list(config)
    return MobileResnetGenerator(cfg, n_blocks=n_blocks, norm=norm, input_nc=input_nc, output_nc=output_nc)
