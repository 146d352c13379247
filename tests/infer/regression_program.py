"""Pyro's Bayesian regression tutorial model (global w and b, a data plate of len(x)) and its
data, shared by the tests of fit on users' own programs (test_fit_programs.py,
test_fit_clear_errors.py, test_fit_batch_scale_warnings.py) and tests/test_lightning.py."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.util
import torch
from pyro.infer.autoguide import AutoNormal


def _regression_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g)
    return x, 3.0 * x + 0.5 + 0.1 * torch.randn(n, generator=g)


def regression(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    w = pyro.sample("w", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    with pyro.plate("N", x.shape[0]):
        pyro.sample("y", dist.Normal(w * x + b, 0.1), obs=y)


def _posterior_mean(guide: AutoNormal) -> dict[str, float]:
    return {k: float(v) for k, v in guide.median().items()}
