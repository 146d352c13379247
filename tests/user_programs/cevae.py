"""Pyro's causal effect VAE (``pyro.contrib.cevae``, examples/contrib/cevae) as a user runs
it: its ``Model`` and ``Guide`` PyroModules take ``(x, t, y, size=N)`` under
``pyro.plate("data", N, subsample=x)``, the guide observes ``t`` and ``y`` as auxiliary
sites, and ``TraceCausalEffect_ELBO`` adds their log-densities to the ELBO. The data follow
the example's synthetic process: a binary confounder ``z`` drives the features, the
treatment and the outcome, so the true individual effect of ``t`` on ``y`` is known.

References:
    Louizos, Shalit, Mooij, Sontag, Zemel, Welling, "Causal Effect Inference with Deep
    Latent-Variable Models", NeurIPS 2017 (arXiv:1705.08821).
"""

from __future__ import annotations

import torch
from pyro.contrib.cevae import CEVAE
from pyro.nn import PyroModule

FEATURE_DIM = 5


def synthetic(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(x, t, y, true_ite)``: ``z ~ Bernoulli(1/2)``, ``x ~ N(z, 5 z + 3 (1 - z))``,
    ``t ~ Bernoulli(0.75 z + 0.25 (1 - z))``, ``y ~ Bernoulli(sigmoid(3 (z + 2 (2 t - 1))))``;
    the true effect is ``sigmoid(3 (z + 2)) - sigmoid(3 (z - 2))`` per example."""
    g = torch.Generator().manual_seed(seed)
    z = torch.bernoulli(torch.full((n,), 0.5), generator=g)
    spread = (5 * z + 3 * (1 - z)).unsqueeze(-1)
    x = z.unsqueeze(-1) + spread * torch.randn(n, FEATURE_DIM, generator=g)
    t = torch.bernoulli(0.75 * z + 0.25 * (1 - z), generator=g)
    y = torch.bernoulli(torch.sigmoid(3 * (z + 2 * (2 * t - 1))), generator=g)
    true_ite = torch.sigmoid(3 * (z + 2)) - torch.sigmoid(3 * (z - 2))
    return x, t, y, true_ite


class Named(PyroModule):
    """Makes CEVAE's model and guide children of one PyroModule. On their own each is a root
    PyroModule, so both register their plain ``nn.Module`` children by attribute name alone
    and ``Model.t_nn`` and ``Guide.t_nn`` (also ``y0_nn``, ``y1_nn``) share one param-store
    entry: Pyro's SVI then leaves the model's copies untrained. Here they become
    ``model.t_nn`` and ``guide.t_nn``."""

    def __init__(self, cevae: CEVAE) -> None:
        super().__init__()
        self.model = cevae.model
        self.guide = cevae.guide


def small_cevae() -> CEVAE:
    """A CEVAE small enough for a test, its model and guide named apart (:class:`Named`)."""
    cevae = CEVAE(FEATURE_DIM, latent_dim=3, hidden_dim=16, num_layers=2, num_samples=20)
    Named(cevae)  # the names it gives stay with the model and guide
    return cevae
