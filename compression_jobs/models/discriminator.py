"""PatchGAN discriminator (the reference ``NLayerDiscriminator`` layout, keys ``model.N.*``)."""

from __future__ import annotations

import torch
from torch import nn

from compression_jobs.models.norm import norm_layer, uses_bias


class PatchGANDiscriminator(nn.Module):
    """Classifies overlapping patches as real/fake; n_layers=3 gives the 70x70 PatchGAN."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        make_norm = norm_layer(norm)
        bias = uses_bias(norm)
        kw, padw = 4, 1
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            seq += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=2, padding=padw, bias=bias),
                make_norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        seq += [
            nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=1, padding=padw, bias=bias),
            make_norm(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=padw),
        ]
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def patchgan_discriminator(ndf: int = 64, n_layers: int = 3, norm: str = "batch", input_nc: int = 3) -> PatchGANDiscriminator:
    """For pix2pix pass input_nc = input + output channels (the conditional discriminator sees both)."""
    return PatchGANDiscriminator(input_nc=input_nc, ndf=ndf, n_layers=n_layers, norm=norm)
