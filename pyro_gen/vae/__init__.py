"""VAE family: priors, decoders/likelihoods and guides as swappable parts of a Pyro
model/guide pair."""

from __future__ import annotations

from pyro_gen.vae.decoders import ConvDecoder, Decoder, MLPDecoder
from pyro_gen.vae.encoders import ConvEncoder, Encoder, MLPEncoder
from pyro_gen.vae.guides import NormalGuide
from pyro_gen.vae.likelihoods import (
    BernoulliLikelihood,
    CategoricalLikelihood,
    GaussianLikelihood,
    Likelihood,
    make_likelihood,
)
from pyro_gen.vae.priors import NormalPrior
from pyro_gen.vae.sites import DATA_PLATE, LATENT, OBS, latent_site
from pyro_gen.vae.vae import VAE

__all__ = [
    "DATA_PLATE",
    "LATENT",
    "OBS",
    "VAE",
    "BernoulliLikelihood",
    "CategoricalLikelihood",
    "ConvDecoder",
    "ConvEncoder",
    "Decoder",
    "Encoder",
    "GaussianLikelihood",
    "Likelihood",
    "MLPDecoder",
    "MLPEncoder",
    "NormalGuide",
    "NormalPrior",
    "latent_site",
    "make_likelihood",
]
