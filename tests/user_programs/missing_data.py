"""Probabilistic PCA on data with missing entries, written with Pyro's ``obs_mask``: the
observed entries are conditioned on and Pyro splits the site into ``x_observed`` and a
latent ``x_unobserved`` that the guide imputes. Loadings, offsets and noise are
``pyro.param`` s (maximum likelihood), the factors ``z`` are local latents:

.. math::

    z_n \\sim \\mathcal{N}(0, I_K),\\quad x_{nd} \\sim \\mathcal{N}((z_n W + b)_d, \\sigma^2),

so :math:`\\log p(x_{n,O_n})` of each row's observed entries :math:`O_n` is Gaussian in
closed form (:func:`exact_log_likelihood`), the yardstick of the bounds.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

NUM_ROWS, DIM, RANK = 64, 6, 2
MISSING = 0.3


def rows(num_rows: int = NUM_ROWS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, mask)``: rows of a rank-2 PPCA with noise 0.3, ``mask`` True where an entry is
    observed (70%); the missing entries of ``x`` hold 0."""
    w = torch.randn(RANK, DIM, generator=torch.Generator().manual_seed(1234))  # every split
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rows, RANK, generator=g) @ w + 0.3 * torch.randn(num_rows, DIM, generator=g)
    mask = torch.rand(num_rows, DIM, generator=g) > MISSING
    return x.masked_fill(~mask, 0.0), mask


def _params() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w = pyro.param("w", lambda: 0.1 * torch.randn(RANK, DIM))
    b = pyro.param("b", lambda: torch.zeros(DIM))
    sigma = pyro.param("sigma", lambda: torch.tensor(1.0), constraint=constraints.positive)
    return w, b, sigma


def model(x: torch.Tensor, mask: torch.Tensor) -> None:
    w, b, sigma = _params()
    with pyro.plate("rows", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Normal(x.new_zeros(RANK), 1.0).to_event(1))
        # z is (..., rows, 1, RANK) under the rows plate at dim -2; features are dim -1
        loc = (z @ w + b).squeeze(-2)
        with pyro.plate("features", DIM, dim=-1):
            pyro.sample("x", dist.Normal(loc, sigma), obs=x, obs_mask=mask)


def exact_log_likelihood(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's :math:`\\log p(x_{n,O_n})` under the param store's ``w, b, sigma``:
    :math:`\\mathcal{N}(b_O, W_O^\\top W_O + \\sigma^2 I)` on the observed entries."""
    with torch.no_grad():
        w, b, sigma = (t.double() for t in _params())
        cov = w.T @ w + sigma**2 * torch.eye(DIM, dtype=torch.float64)
        out = []
        for row, seen in zip(x.double(), mask):
            normal = dist.MultivariateNormal(b[seen], cov[seen][:, seen])
            out.append(normal.log_prob(row[seen]))
    return torch.stack(out)


class Encoder(nn.Module):
    """``(x with zeros where missing, mask)`` to a Normal's ``(loc, scale)`` over ``z``."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(2 * DIM, hidden), nn.Tanh())
        self.loc = nn.Linear(hidden, RANK)
        self.scale = nn.Linear(hidden, RANK)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(torch.cat([x, mask.to(x.dtype)], -1))
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-3


def impute(z: torch.Tensor, mask: torch.Tensor) -> None:
    """The guide's ``x_unobserved``: the model's own conditional given ``z`` (its density
    then cancels in the weights), on the missing entries only."""
    w, b, sigma = _params()
    with pyro.plate("features", DIM, dim=-1):
        loc = (z @ w + b).squeeze(-2)
        pyro.sample("x_unobserved", dist.Normal(loc, sigma).mask(~mask))


class Guide(nn.Module):
    """Hand-written: the encoder's Normal over ``z`` (pushed through flow layers if
    given), then the imputation."""

    def __init__(self, iafs: list[nn.Module] = ()) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.iafs = nn.ModuleList(iafs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        pyro.module("ppca_guide", self)
        with pyro.plate("rows", x.shape[0], dim=-2):
            loc, scale = self.encoder(x, mask)
            base = dist.Normal(loc.unsqueeze(-2), scale.unsqueeze(-2)).to_event(1)
            fn = dist.TransformedDistribution(base, list(self.iafs)) if self.iafs else base
            z = pyro.sample("z", fn)
            impute(z, mask)
