"""The CycleGAN/pix2pix ResNet generator, module-for-module like the junyanz reference code.

Layout of ``model`` (ngf=64, 9 blocks gives the familiar indices ``model.1`` … ``model.26``)::

    0 ReflectionPad2d(3)  1 Conv7x7(in, ngf)  2 norm  3 ReLU
    4 Conv3x3 s2 (ngf, 2ngf)  5 norm  6 ReLU
    7 Conv3x3 s2 (2ngf, 4ngf) 8 norm  9 ReLU
    10 .. 10+n-1  ResnetBlock(4ngf)          (``conv_block`` inside each)
    ConvT3x3 s2 op1 (4ngf, 2ngf), norm, ReLU
    ConvT3x3 s2 op1 (2ngf, ngf), norm, ReLU
    ReflectionPad2d(3), Conv7x7(ngf, out) (always biased), Tanh

Input height and width must be divisible by 4 (two stride-2 downsamplings).
"""

from __future__ import annotations

import torch
from torch import nn

from compression_jobs.models.norm import norm_layer, uses_bias


class ResnetBlock(nn.Module):
    """x + conv_block(x); conv_block = pad, conv3x3, norm, ReLU, [dropout 0.5], pad, conv3x3, norm."""

    def __init__(self, dim: int, norm: str = "instance", use_dropout: bool = False) -> None:
        super().__init__()
        make_norm = norm_layer(norm)
        bias = uses_bias(norm)
        block: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=bias),
            make_norm(dim),
            nn.ReLU(True),
        ]
        if use_dropout:
            block.append(nn.Dropout(0.5))
        block += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=bias), make_norm(dim)]
        self.conv_block = nn.Sequential(*block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Teacher generator; a ``latest_net_G.pth`` from the reference code loads strictly into it."""

    size_multiple = 4

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        norm: str = "instance",
        use_dropout: bool = False,
        n_blocks: int = 9,
    ) -> None:
        super().__init__()
        if n_blocks < 0:
            raise ValueError("n_blocks must be >= 0")
        self.input_nc, self.output_nc, self.ngf, self.n_blocks, self.norm = input_nc, output_nc, ngf, n_blocks, norm
        make_norm = norm_layer(norm)
        bias = uses_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=bias),
            make_norm(ngf),
            nn.ReLU(True),
        ]
        n_down = 2
        for i in range(n_down):
            mult = 2**i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=bias),
                make_norm(ngf * mult * 2),
                nn.ReLU(True),
            ]
        mult = 2**n_down
        layers += [ResnetBlock(ngf * mult, norm=norm, use_dropout=use_dropout) for _ in range(n_blocks)]
        for i in range(n_down):
            mult = 2 ** (n_down - i)
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=bias
                ),
                make_norm(ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def resnet_generator(
    ngf: int = 64,
    n_blocks: int = 9,
    norm: str = "instance",
    use_dropout: bool = False,
    input_nc: int = 3,
    output_nc: int = 3,
) -> ResnetGenerator:
    """CycleGAN's ``resnet_9blocks`` (defaults) or ``resnet_6blocks`` (n_blocks=6)."""
    return ResnetGenerator(input_nc, output_nc, ngf=ngf, norm=norm, use_dropout=use_dropout, n_blocks=n_blocks)
