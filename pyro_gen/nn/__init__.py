"""Networks used as conditioners and backbones (no probability code here)."""

from __future__ import annotations

from pyro_gen.nn.made import MADE, MaskedLinear
from pyro_gen.nn.mlp import MLP, broadcast_context
from pyro_gen.nn.resnet import ResNetConv

__all__ = ["MADE", "MLP", "MaskedLinear", "ResNetConv", "broadcast_context"]

# diffusion helper: time-conditioned networks
from pyro_gen.nn.time_embedding import SinusoidalTimeEmbedding, TimeMLP  # noqa: E402
from pyro_gen.nn.unet import UNet  # noqa: E402

__all__ += ["SinusoidalTimeEmbedding", "TimeMLP", "UNet"]

# adversarial training: generators and discriminators
from pyro_gen.nn.conditional_norm import ConditionalBatchNorm  # noqa: E402
from pyro_gen.nn.gan import (  # noqa: E402
    ConvTranslator,
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
)

__all__ += [
    "ConditionalBatchNorm",
    "ConvTranslator",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "MLPDiscriminator",
    "MLPGenerator",
]
