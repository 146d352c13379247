"""A sparse gamma deep exponential family as in Pyro's ``examples/sparse_gamma_def.py``:
positive latents everywhere, global Gamma weights shared by all data points and local Gamma
factors per data point, Poisson counts observed (two layers here, tiny widths):

.. math::

    W_t, W_b \\sim \\operatorname{Gamma}(\\alpha_w, \\beta_w),\\quad
    z^{t}_n \\sim \\operatorname{Gamma}(\\alpha_z, \\beta_z),\\quad
    z^{b}_n \\sim \\operatorname{Gamma}(\\alpha_z, \\alpha_z / (z^{t}_n W_t)),\\quad
    x_n \\sim \\operatorname{Poisson}(z^{b}_n W_b).

Pyro's example trains on all data at once with ``TraceMeanField_ELBO``; its hand-written
guide is mean field with per-point Gamma parameters kept away from zero (softplus with a
floor). A guide that encodes ``x`` (the autoguide, the flow guide) trains on minibatches.

References:
    Ranganath, Tang, Charlin, Blei, "Deep Exponential Families", arXiv:1411.2581.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ExpTransform
from torch import nn
from torch.nn.functional import softplus

NUM_POINTS, DIM, TOP, BOTTOM = 40, 12, 2, 4
ALPHA_Z, BETA_Z, ALPHA_W, BETA_W = 1.0, 1.0, 1.0, 1.0
FLOOR = 1e-3  # the example's floor on every Gamma parameter of its guide


def counts(num_points: int = NUM_POINTS, seed: int = 0) -> torch.Tensor:
    """Poisson counts ``(num_points, DIM)`` from a non-negative factorization of rank 4."""
    g = torch.Generator().manual_seed(seed)
    factors = torch.rand(num_points, BOTTOM, generator=g) * 2
    loadings = (torch.rand(BOTTOM, DIM, generator=g) < 0.4).float() * 3
    return torch.poisson(factors @ loadings + 0.1, generator=g)


def model(x: torch.Tensor) -> None:
    with pyro.plate("w_top_plate", TOP * BOTTOM):
        w_top = pyro.sample("w_top", dist.Gamma(x.new_tensor(ALPHA_W), BETA_W))
    with pyro.plate("w_bottom_plate", BOTTOM * DIM):
        w_bottom = pyro.sample("w_bottom", dist.Gamma(x.new_tensor(ALPHA_W), BETA_W))
    with pyro.plate("data", x.shape[0]):
        z_top = pyro.sample(
            "z_top", dist.Gamma(x.new_tensor(ALPHA_Z), BETA_Z).expand([TOP]).to_event(1)
        )
        mean_bottom = z_top @ w_top.reshape(w_top.shape[:-1] + (TOP, BOTTOM))
        z_bottom = pyro.sample("z_bottom", dist.Gamma(ALPHA_Z, ALPHA_Z / mean_bottom).to_event(1))
        rate = z_bottom @ w_bottom.reshape(w_bottom.shape[:-1] + (BOTTOM, DIM))
        pyro.sample("obs", dist.Poisson(rate).to_event(1), obs=x)


def _gamma_params(name: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gamma's shape and rate from unconstrained parameters, each at least FLOOR."""
    alpha = pyro.param(f"log_alpha_{name}", lambda: 0.5 + 0.1 * torch.randn(shape))
    mean = pyro.param(f"log_mean_{name}", lambda: 0.1 * torch.randn(shape))
    alpha = softplus(alpha).clamp(min=FLOOR)
    mean = softplus(mean).clamp(min=FLOOR)
    return alpha, alpha / mean


def guide(x: torch.Tensor) -> None:
    """The example's mean-field guide: a Gamma per latent entry (for the full data set)."""
    with pyro.plate("w_top_plate", TOP * BOTTOM):
        pyro.sample("w_top", dist.Gamma(*_gamma_params("w_top", (TOP * BOTTOM,))))
    with pyro.plate("w_bottom_plate", BOTTOM * DIM):
        pyro.sample("w_bottom", dist.Gamma(*_gamma_params("w_bottom", (BOTTOM * DIM,))))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z_top", dist.Gamma(*_gamma_params("z_top", (x.shape[0], TOP))).to_event(1))
        pyro.sample(
            "z_bottom", dist.Gamma(*_gamma_params("z_bottom", (x.shape[0], BOTTOM))).to_event(1)
        )


class FlowGuide(nn.Module):
    """Global weights log-normal (mean field); each point's factors from an encoder of
    ``log1p(x)``: a Normal pushed through an IAF and ``exp`` (so they are positive).

    Args:
        iafs_top: flow layers of dimension ``TOP``.
        iafs_bottom: flow layers of dimension ``BOTTOM``.
    """

    def __init__(self, iafs_top: list[nn.Module], iafs_bottom: list[nn.Module]) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(DIM, 16), nn.Softplus())
        self.heads = nn.ModuleDict(
            {name: nn.Linear(16, 2 * width) for name, width in (("top", TOP), ("bottom", BOTTOM))}
        )
        self.iafs = nn.ModuleDict(
            {"top": nn.ModuleList(iafs_top), "bottom": nn.ModuleList(iafs_bottom)}
        )
        self.w_loc = nn.ParameterDict(
            {
                "w_top": nn.Parameter(torch.zeros(TOP * BOTTOM)),
                "w_bottom": nn.Parameter(torch.zeros(BOTTOM * DIM)),
            }
        )
        self.w_log_scale = nn.ParameterDict(
            {
                "w_top": nn.Parameter(torch.full((TOP * BOTTOM,), -1.0)),
                "w_bottom": nn.Parameter(torch.full((BOTTOM * DIM,), -1.0)),
            }
        )

    def forward(self, x: torch.Tensor) -> None:
        pyro.module("def_flow_guide", self)
        for name, size in (("w_top", TOP * BOTTOM), ("w_bottom", BOTTOM * DIM)):
            with pyro.plate(f"{name}_plate", size):
                loc, scale = self.w_loc[name], self.w_log_scale[name].exp()
                pyro.sample(name, dist.LogNormal(loc, scale))
        h = self.hidden(torch.log1p(x))
        with pyro.plate("data", x.shape[0]):
            for part in ("top", "bottom"):
                loc, raw_scale = self.heads[part](h).chunk(2, -1)
                base = dist.Normal(loc, softplus(raw_scale) + 1e-3).to_event(1)
                flow = [*self.iafs[part], ExpTransform()]
                pyro.sample(f"z_{part}", dist.TransformedDistribution(base, flow))
