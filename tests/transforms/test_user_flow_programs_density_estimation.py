"""Density estimation with a pyro_gen flow as a Pyro user writes it (``obs=data`` in a plate,
``poutine.scale``, an expanded base, ``condition``): a flow that is an affine map gives the
closed-form Gaussian's loss, and ``Predictive`` draws have its moments.

Each program is one a Pyro user writes, unchanged (flow_user_programs.py holds those shared
by several files). Every loss is checked against the same bound computed by hand from the
values the guide drew, with each flow density taken by the change of variables through an
autograd Jacobian (float64)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO

from pyro_gen import transforms as T
from tests.transforms.flow_user_programs import _compose, _normal, _perturb

# ------------------------------------------------------------------ density estimation


def _affine_flow() -> list:
    """Layers whose composition is an affine map ``x = A u + b`` (in float32, as most
    users build them): the density is the Gaussian ``N(b, A A^T)``."""
    layers = [T.ActNorm(3), T.invertible_conv1x1(3), T.permute(3, "random", seed=1), T.ActNorm(3)]
    layers[0](torch.randn(64, 3))  # data-dependent initialisation, as a first batch does
    layers[3](2.0 + 3.0 * torch.randn(64, 3))
    return [_perturb(t, 0.3) for t in layers]


def _closed_form(layers: list) -> dist.MultivariateNormal:
    forward = _compose(layers)
    with torch.no_grad():
        b = forward(torch.zeros(3))
        a = (forward(torch.eye(3)) - b).T  # columns: images of the unit vectors
    return dist.MultivariateNormal(b.double(), covariance_matrix=(a @ a.T).double())


def _density_model(layers: list, how: str):
    base = _normal(torch.zeros(3), 1.0)

    def model(x: torch.Tensor | None = None, n: int = 0) -> torch.Tensor:
        pyro.module("flow", torch.nn.ModuleList(layers))
        flow = dist.TransformedDistribution(base, layers)
        if how == "expand":  # no plate: the batch as one event
            return pyro.sample("x", flow.expand([n]).to_event(1), obs=x)
        with pyro.plate("data", n):
            if how == "scaled":
                with poutine.scale(scale=2.5):
                    return pyro.sample("x", flow, obs=x)
            return pyro.sample("x", flow, obs=x)

    return model


@pytest.mark.parametrize("how", ["plate", "scaled", "expand", "condition"])
def test_density_estimation_loss_is_the_closed_form_gaussian(how: str) -> None:
    """``pyro.sample("x", flow, obs=data)`` with an empty guide: ``Trace_ELBO`` (vectorized
    particles too) is minus the closed-form log-likelihood, times ``poutine.scale``'s
    factor; ``poutine.condition`` in place of ``obs`` and ``flow.expand([N]).to_event(1)``
    in place of the plate give the same."""
    torch.manual_seed(4)
    layers = _affine_flow()
    x = torch.randn(6, 3) * 2.0
    model = _density_model(layers, how)
    args = (x, 6)
    if how == "condition":
        model, args = poutine.condition(model, data={"x": x}), (None, 6)
    expected = -_closed_form(layers).log_prob(x.double()).sum() * (2.5 if how == "scaled" else 1)
    for elbo in (Trace_ELBO(), Trace_ELBO(num_particles=3, vectorize_particles=True)):
        loss = elbo.loss(model, lambda *_: None, *args)
        assert math.isclose(loss, float(expected), rel_tol=1e-5)


@pytest.mark.parametrize("parallel", [False, True])
def test_predictive_draws_have_the_closed_form_moments(parallel: bool) -> None:
    """``Predictive(model, num_samples=S)`` of the density model: ``(S, N, 3)`` draws whose
    mean and covariance are the closed form's (mean within 5 standard errors)."""
    torch.manual_seed(5)
    layers = _affine_flow()
    exact = _closed_form(layers)
    model = _density_model(layers, "plate")
    draws = Predictive(model, num_samples=40, parallel=parallel)(None, 50)["x"]
    assert draws.shape == (40, 50, 3)
    flat = draws.reshape(-1, 3).double()
    se = (exact.covariance_matrix.diagonal() / len(flat)).sqrt()
    assert bool(((flat.mean(0) - exact.mean).abs() < 5 * se).all())
    cov = torch.cov(flat.T)
    scale = exact.covariance_matrix.diagonal().sqrt()
    corr_err = (cov - exact.covariance_matrix) / (scale[:, None] * scale[None, :])
    assert float(corr_err.abs().max()) < 0.15
