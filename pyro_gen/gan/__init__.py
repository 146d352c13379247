"""Generative adversarial networks the Pyro way.

A generator is an ordinary Pyro model (:class:`Generator`: ``z`` from a prior, the example
a Delta-observed site); adversarial objectives are Pyro loss objects that own their
discriminator (:class:`MinimaxGAN`, :class:`NonSaturatingGAN`, :class:`LeastSquaresGAN`,
:class:`HingeGAN`, :class:`WassersteinGAN`, :class:`WassersteinGP`), so a GAN trains with
:func:`pyro_gen.infer.fit` or :class:`pyro.infer.SVI` like any other model; a generator can
keep an :class:`ExponentialAverage` of its weights to sample from. :class:`CycleGAN` and
:class:`CycleGANLoss` translate between unpaired domains.
"""

from __future__ import annotations

from pyro_gen.gan.adversarial import AdversarialBatch, AdversarialLoss
from pyro_gen.gan.average import ExponentialAverage
from pyro_gen.gan.cycle import CycleGAN, CycleGANLoss
from pyro_gen.gan.generator import DATA_PLATE, LATENT, OBS, Generator, StandardNormal
from pyro_gen.gan.objectives import HingeGAN, LeastSquaresGAN, MinimaxGAN, NonSaturatingGAN
from pyro_gen.gan.surrogate import SurrogateLoss
from pyro_gen.gan.wasserstein import WassersteinGAN, WassersteinGP, gradient_penalty

__all__ = [
    "DATA_PLATE",
    "LATENT",
    "OBS",
    "AdversarialBatch",
    "AdversarialLoss",
    "CycleGAN",
    "CycleGANLoss",
    "ExponentialAverage",
    "Generator",
    "HingeGAN",
    "LeastSquaresGAN",
    "MinimaxGAN",
    "NonSaturatingGAN",
    "StandardNormal",
    "SurrogateLoss",
    "WassersteinGAN",
    "WassersteinGP",
    "gradient_penalty",
]
