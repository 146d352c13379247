"""Name-based construction of VAE-family models (used by the ``pyro-gen`` command)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pyro_gen.transforms._base import as_event_shape
from pyro_gen.vae.hierarchical import HierarchicalVAE
from pyro_gen.vae.likelihoods import make_likelihood
from pyro_gen.vae.posteriors import make_posterior
from pyro_gen.vae.priors import make_prior
from pyro_gen.vae.vae import VAE


def build_vae(
    event_shape: Sequence[int] = (28, 28),
    prior: str = "normal",
    guide: str = "normal",
    layers: int = 1,
    likelihood: str = "bernoulli",
    z_dim: int = 50,
    hidden_dim: int = 400,
    num_components: int | None = None,
    num_flows: int = 2,
    z_dims: Sequence[int] | None = None,
) -> nn.Module:
    """Build a VAE from option names, as ``pyro-gen train vae`` exposes them.

    Args:
        event_shape: shape of one example.
        prior: ``normal``, ``mog``, ``vamp`` or ``flow``.
        guide: ``normal`` (amortized mean-field posterior family), ``iaf`` (amortized flow
            family, one layer only) or ``auto``
            (:class:`~pyro_gen.vae.autoguide.AutoAmortizedNormal` traced from the model).
        layers: 1 (:class:`~pyro_gen.vae.VAE`) or more
            (:class:`~pyro_gen.vae.hierarchical.HierarchicalVAE`, top-down inference; latent
            sizes ``z_dims`` or ``z_dim`` halved per layer; the prior applies to the top).
        likelihood: ``bernoulli``, ``gaussian`` (fixed scale 0.1), ``gaussian_learned`` or
            ``categorical`` (256 levels).
        z_dim: latent size (of the bottom layer).
        hidden_dim: hidden width of every MLP.
        num_components: mixture components (MoG, default 10) or pseudo-inputs (Vamp, 500).
        num_flows: IAF steps of the ``iaf`` posterior family.

    Example:
        >>> type(build_vae((8, 8), prior="mog", guide="iaf", z_dim=4, hidden_dim=16)).__name__
        'VAE'
        >>> build_vae((8, 8), layers=2, z_dim=4, hidden_dim=16).z_dims
        (4, 2)
    """
    event_shape = as_event_shape(event_shape)
    if layers < 1:
        raise ValueError(f"layers must be at least 1, got {layers}")
    if guide not in ("normal", "iaf", "auto"):
        raise ValueError(f"unknown guide {guide!r}; choose normal, iaf or auto")
    if layers == 1:
        p = make_prior(prior, z_dim, event_shape, num_components)
        if guide == "auto":
            parts = {"guide": "auto"}
        else:
            q = make_posterior(guide, event_shape, z_dim, hidden_dim, num_flows=num_flows)
            parts = {"posterior": q}
        return VAE(
            event_shape, z_dim, hidden_dim, likelihood=make_likelihood(likelihood), prior=p, **parts
        )
    if guide == "iaf":
        raise ValueError(
            f"the IAF posterior family is for one latent layer; a {layers}-layer VAE takes "
            f"guide='normal' (its top-down guide) or guide='auto'"
        )
    if prior == "vamp":
        raise ValueError("the VampPrior is implemented for 1-layer VAEs only")
    dims = tuple(z_dims) if z_dims else tuple(max(1, z_dim // 2**i) for i in range(layers))
    if len(dims) != layers:
        raise ValueError(f"z_dims has {len(dims)} entries for {layers} layers")
    return HierarchicalVAE(
        event_shape,
        dims,
        hidden_dim,
        likelihood=make_likelihood(likelihood),
        inference="top_down",
        prior=make_prior(prior, dims[-1], event_shape, num_components),
        guide="auto" if guide == "auto" else None,
    )
