"""The pix2pix U-Net generator, module-for-module like the junyanz reference code.

Recursive ``UnetSkipConnectionBlock``s: keys look like ``model.model.1.model.3.model.1.weight``.
``num_downs`` stride-2 downsamplings, so height and width must be divisible by ``2**num_downs``
(256 for unet_256 with num_downs=8, 128 for unet_128 with 7).

The activations are in-place exactly as in the original (``LeakyReLU(0.2, True)``,
``ReLU(True)``). That matters: the in-place LeakyReLU at the start of an inner block also
rewrites the tensor that the skip connection concatenates, and the original's outputs depend
on it, so we keep it to stay output-identical.
"""

from __future__ import annotations

import torch
from torch import nn

from compression_jobs.models.norm import norm_layer, uses_bias


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: down -> submodule -> up, concatenated with its input (except outermost)."""

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "batch",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        make_norm = norm_layer(norm)
        bias = uses_bias(norm)
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = make_norm(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = make_norm(outer_nc)
        if outermost:
            assert submodule is not None
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=bias)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            assert submodule is not None
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=bias)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """pix2pix's ``unet_256`` (num_downs=8) / ``unet_128`` (num_downs=7) generator."""

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "batch",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError("num_downs must be >= 5 (the reference layout has 5 fixed levels)")
        self.input_nc, self.output_nc, self.num_downs, self.ngf, self.norm = input_nc, output_nc, num_downs, ngf, norm
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm=norm)

    @property
    def size_multiple(self) -> int:
        return 2**self.num_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def unet_generator(
    num_downs: int = 8,
    ngf: int = 64,
    norm: str = "batch",
    use_dropout: bool = False,
    input_nc: int = 3,
    output_nc: int = 3,
) -> UnetGenerator:
    """pix2pix's U-Net generator (defaults: unet_256 with batch norm, the pix2pix default)."""
    return UnetGenerator(input_nc, output_nc, num_downs=num_downs, ngf=ngf, norm=norm, use_dropout=use_dropout)
