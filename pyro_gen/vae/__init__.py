"""VAE family: priors, decoders/likelihoods and guides as swappable parts of a Pyro
model/guide pair."""

from __future__ import annotations

from pyro_gen.distributions.mixture import GaussianMixture, MixturePrior
from pyro_gen.distributions.vamp import VampPrior
from pyro_gen.vae.autoguide import AutoAmortizedNormal
from pyro_gen.vae.bayesian import BayesianVAE
from pyro_gen.vae.builders import build_vae
from pyro_gen.vae.decoders import ConvDecoder, Decoder, MLPDecoder
from pyro_gen.vae.decoding import reconstruct
from pyro_gen.vae.diagnostics import (
    PosteriorCollapseWarning,
    active_units,
    check_posterior_collapse,
    image_grid,
    interpolate,
    kl_per_dim,
    reconstruction_grid,
)
from pyro_gen.vae.discrete import DiscreteVAE, anneal_temperature, temperature_schedule
from pyro_gen.vae.encoders import ConvEncoder, Encoder, MLPEncoder
from pyro_gen.vae.guide_slot import GuideSlot
from pyro_gen.vae.hierarchical import HierarchicalVAE
from pyro_gen.vae.likelihoods import (
    BernoulliLikelihood,
    CategoricalLikelihood,
    GaussianLikelihood,
    Likelihood,
    make_likelihood,
)
from pyro_gen.vae.missing import check_mask, impute, missing_at_random
from pyro_gen.vae.naive import naive_log_likelihood, prior_guide
from pyro_gen.vae.objectives import FreeBitsELBO, iwae, make_loss
from pyro_gen.vae.posterior_point import PosteriorPoint
from pyro_gen.vae.posteriors import (
    IAFPosterior,
    NormalPosterior,
    PerExamplePosterior,
    Posterior,
    make_posterior,
)
from pyro_gen.vae.priors import FlowPrior, NormalPrior, make_prior
from pyro_gen.vae.refine import refine_posterior, semi_amortized_elbo
from pyro_gen.vae.semi_supervised import SSVAE, semi_supervised_batches
from pyro_gen.vae.sites import DATA_PLATE, LATENT, OBS, latent_site
from pyro_gen.vae.stacked import M1M2, LatentFeatures, latent_features
from pyro_gen.vae.vae import VAE

__all__ = [
    "FreeBitsELBO",
    "BayesianVAE",
    "DiscreteVAE",
    "anneal_temperature",
    "temperature_schedule",
    "check_mask",
    "impute",
    "missing_at_random",
    "PosteriorCollapseWarning",
    "active_units",
    "build_vae",
    "check_posterior_collapse",
    "image_grid",
    "interpolate",
    "iwae",
    "kl_per_dim",
    "make_loss",
    "naive_log_likelihood",
    "prior_guide",
    "reconstruct",
    "reconstruction_grid",
    "PosteriorPoint",
    "refine_posterior",
    "semi_amortized_elbo",
    "semi_supervised_batches",
    "SSVAE",
    "LatentFeatures",
    "M1M2",
    "latent_features",
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
    "GuideSlot",
    "NormalPosterior",
    "NormalPrior",
    "FlowPrior",
    "GaussianMixture",
    "IAFPosterior",
    "MixturePrior",
    "PerExamplePosterior",
    "Posterior",
    "VampPrior",
    "make_posterior",
    "make_prior",
    "latent_site",
    "make_likelihood",
]

# Deprecated names (renamed because these return distributions and are not Pyro guides);
# kept for one release, each access warns.
_RENAMED = {
    "NormalGuide": "NormalPosterior",
    "IAFGuide": "IAFPosterior",
    "PerExampleGuide": "PerExamplePosterior",
    "make_guide": "make_posterior",
}


def __getattr__(name: str):
    if name in _RENAMED:
        import warnings

        new = _RENAMED[name]
        warnings.warn(
            f"pyro_gen.vae.{name} was renamed {new}: it returns a distribution and is not a "
            f"Pyro guide (pass it as VAE(..., posterior=...))",
            FutureWarning,
            stacklevel=2,
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
