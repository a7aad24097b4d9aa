"""Generator and discriminator architectures (torchvision-style builders).

Teachers (checkpoint-compatible with the junyanz pytorch-CycleGAN-and-pix2pix code):
``resnet_generator``, ``unet_generator``. Students: ``mobile_resnet_generator`` with a
``ChannelConfig``. Once-for-all: ``supernet`` with a ``ChannelSpace``. ``patchgan_discriminator``.
"""

from compression_jobs.models.discriminator import PatchGANDiscriminator, patchgan_discriminator
from compression_jobs.models.mobile import (
    CHANNEL_NAMES,
    ChannelConfig,
    MobileResnetBlock,
    MobileResnetGenerator,
    SeparableConv2d,
    block_groups,
    mobile_resnet_generator,
)
from compression_jobs.models.norm import NORMS, norm_layer, uses_bias
from compression_jobs.models.resnet import ResnetBlock, ResnetGenerator, resnet_generator
from compression_jobs.models.supernet import (
    ChannelSpace,
    ElasticConv2d,
    ElasticConvTranspose2d,
    SuperMobileResnetGenerator,
    sample_config,
    supernet,
)
from compression_jobs.models.unet import UnetGenerator, UnetSkipConnectionBlock, unet_generator

__all__ = [
    "CHANNEL_NAMES", "NORMS", "ChannelConfig", "ChannelSpace", "ElasticConv2d", "ElasticConvTranspose2d",
    "MobileResnetBlock", "MobileResnetGenerator", "PatchGANDiscriminator", "ResnetBlock", "ResnetGenerator",
    "SeparableConv2d", "SuperMobileResnetGenerator", "UnetGenerator", "UnetSkipConnectionBlock",
    "block_groups", "build_generator", "mobile_resnet_generator", "norm_layer", "patchgan_discriminator",
    "resnet_generator", "sample_config", "supernet", "unet_generator", "uses_bias",
]


def build_generator(arch: str, **kwargs):  # noqa: ANN201 - returns one of the generator classes
    """Build by family name: resnet, unet, mobile-resnet (needs config=), supernet."""
    builders = {
        "resnet": resnet_generator,
        "unet": unet_generator,
        "mobile-resnet": mobile_resnet_generator,
        "supernet": supernet,
    }
    if arch not in builders:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(builders)}")
    return builders[arch](**kwargs)
