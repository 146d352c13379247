"""Models with a closed-form evidence for the tests of pyro_gen's evaluation helpers
(``evaluate_elbo``, ``iwae_log_likelihood``; test_evaluation_*.py): data of a linear Gaussian
model, and a scalar model under a data plate of any name with its exact log p(x)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from tests.infer.linear_gaussian import LinearGaussian


def _data(model: LinearGaussian, n: int = 50) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(n, model.W.shape[1], generator=g, dtype=torch.float64)
    return (
        z @ model.W.T + model.b + model.noise * torch.randn(n, 3, generator=g, dtype=torch.float64)
    )


def _scalar_model(plate: str):
    """z ~ N(0, 1), x | z ~ N(z, 1) under a plate called ``plate``; exact guide."""

    def model(x: torch.Tensor) -> None:
        with pyro.plate(plate, x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x: torch.Tensor) -> None:
        with pyro.plate(plate, x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))

    return model, guide


def _exact_scalar(x: torch.Tensor) -> torch.Tensor:
    return dist.Normal(torch.zeros((), dtype=torch.float64), 2**0.5).log_prob(x)


X = torch.linspace(-2.0, 2.0, 12, dtype=torch.float64)
