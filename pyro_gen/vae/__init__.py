"""VAE family: priors, decoders/likelihoods and guides as swappable parts of a Pyro
model/guide pair."""

from __future__ import annotations

from pyro_gen.distributions.mixture import GaussianMixture, MixturePrior
from pyro_gen.distributions.vamp import VampPrior
from pyro_gen.vae.autoguide import AutoAmortizedNormal
from pyro_gen.vae.builders import build_vae
from pyro_gen.vae.decoders import ConvDecoder, Decoder, MLPDecoder
from pyro_gen.vae.diagnostics import (
    PosteriorCollapseWarning,
    active_units,
    check_posterior_collapse,
    image_grid,
    interpolate,
    kl_per_dim,
    reconstruction_grid,
)
from pyro_gen.vae.encoders import ConvEncoder, Encoder, MLPEncoder
from pyro_gen.vae.guides import IAFGuide, NormalGuide, PerExampleGuide, make_guide
from pyro_gen.vae.hierarchical import HierarchicalVAE
from pyro_gen.vae.likelihoods import (
    BernoulliLikelihood,
    CategoricalLikelihood,
    GaussianLikelihood,
    Likelihood,
    make_likelihood,
)
from pyro_gen.vae.objectives import FreeBitsELBO, iwae, make_loss
from pyro_gen.vae.priors import FlowPrior, NormalPrior, make_prior
from pyro_gen.vae.refine import refine_posterior, semi_amortized_elbo
from pyro_gen.vae.sites import DATA_PLATE, LATENT, OBS, latent_site
from pyro_gen.vae.vae import VAE

__all__ = [
    "FreeBitsELBO",
    "PosteriorCollapseWarning",
    "active_units",
    "build_vae",
    "check_posterior_collapse",
    "image_grid",
    "interpolate",
    "iwae",
    "kl_per_dim",
    "make_loss",
    "reconstruction_grid",
    "refine_posterior",
    "semi_amortized_elbo",
    "HierarchicalVAE",
    "AutoAmortizedNormal",
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
    "FlowPrior",
    "GaussianMixture",
    "IAFGuide",
    "MixturePrior",
    "PerExampleGuide",
    "VampPrior",
    "make_guide",
    "make_prior",
    "latent_site",
    "make_likelihood",
]
