"""Denoising score matching: equal to explicit score matching up to a constant on a Gaussian,
the ScoreModel's Pyro sites give exactly that loss, and fit trains a usable score."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_gen.diffusion import (
    VESDE,
    VPSDE,
    ScoreModel,
    dsm_loss,
    dsm_weight,
    probability_flow_log_prob,
    sample,
)
from pyro_gen.infer import fit
from pyro_gen.nn.time_embedding import TimeMLP

torch.set_num_threads(1)

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[0.36, 0.18], [0.18, 0.25]], dtype=torch.float64)


class LinearScore(torch.nn.Module):
    """:math:`s(x) = A x + b`, the same at every time."""

    def __init__(self, A: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.A, self.b = torch.nn.Parameter(A), torch.nn.Parameter(b)

    def forward(self, x, t):
        return x @ self.A.T + self.b


def _esm_and_dsm(A, b, alpha, sigma):
    """Closed forms of explicit and denoising score matching for s(x) = A x + b at one time."""
    eye = torch.eye(2, dtype=torch.float64)
    cov_t = alpha**2 * COV + sigma**2 * eye
    P, m = torch.linalg.inv(cov_t), alpha * MU
    B, c = A + P, b - P @ m  # s(x) - true score = B x + c
    esm = 0.5 * (torch.trace(B @ cov_t @ B.T) + (B @ m + c).pow(2).sum())
    dsm = 0.5 * (
        alpha**2 * torch.trace(A @ COV @ A.T)
        + (alpha * A @ MU + b).pow(2).sum()
        + (sigma * A + eye / sigma).pow(2).sum()
    )
    return esm, dsm, 0.5 * (2 / sigma**2 - torch.trace(P))


def test_dsm_equals_explicit_score_matching_up_to_a_constant():
    torch.manual_seed(0)
    sde = VPSDE()
    t = torch.tensor(0.3, dtype=torch.float64)
    alpha, sigma = sde.marginal(t)
    for _ in range(4):
        A, b = torch.randn(2, 2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
        esm, dsm, const = _esm_and_dsm(A, b, alpha, sigma)
        assert torch.isclose(dsm - esm, const, rtol=1e-10)
    # the library's dsm_loss is that DSM: Monte Carlo mean within 4 standard errors
    n = 200_000
    x0 = MU + torch.randn(n, 2, dtype=torch.float64) @ torch.linalg.cholesky(COV).T
    noise = torch.randn(n, 2, dtype=torch.float64)
    net = LinearScore(A, b)
    terms = dsm_loss(net, sde, x0, t.expand(n), noise, event_dim=1, weighting="none").detach()
    assert abs(float(terms.mean() - dsm)) < 4 * float(terms.std()) / n**0.5


def test_weightings():
    sde = VESDE(0.1, 10.0)
    t = torch.tensor([0.2, 0.9])
    assert torch.allclose(dsm_weight(sde, t, "sigma2"), sde.marginal(t)[1] ** 2)
    assert torch.allclose(dsm_weight(sde, t, "likelihood"), sde.diffusion(t) ** 2)
    assert torch.equal(dsm_weight(sde, t, "none"), torch.ones(2))


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_elbo_of_the_model_is_the_dsm_loss(weighting):
    # the sites "t" and "x_t" cancel between model and guide, the time plate averages
    torch.manual_seed(1)
    sde = VPSDE()
    A, b = torch.randn(2, 2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    m = ScoreModel(LinearScore(A, b), sde, (2,), param="score", weighting=weighting,
                   time_samples=3)  # fmt: skip
    x = torch.randn(5, 2, dtype=torch.float64)
    pyro.set_rng_seed(2)
    loss = Trace_ELBO().loss(m.model, m.guide, x)
    pyro.set_rng_seed(2)
    guide_tr = poutine.trace(m.guide).get_trace(x)
    t, x_t = guide_tr.nodes["t"]["value"], guide_tr.nodes["x_t"]["value"]
    assert t.shape == (3, 5) and x_t.shape == (3, 5, 2)
    alpha, sigma = sde.marginal(t)
    noise = (x_t - alpha[..., None] * x) / sigma[..., None]
    expected = dsm_loss(m.score, sde, x.expand(3, 5, 2), t, noise, 1, weighting).mean(0).sum()
    assert abs(loss - float(expected.detach())) < 1e-8 * max(1.0, abs(loss))


def test_fit_trains_a_score_the_samplers_and_likelihood_use():
    torch.manual_seed(3)
    pyro.set_rng_seed(3)
    data = (MU + torch.randn(4096, 2, dtype=torch.float64) @ torch.linalg.cholesky(COV).T).float()
    sde = VPSDE()
    m = ScoreModel(TimeMLP(2, 32, num_layers=2), sde, (2,), time_samples=2)
    optim = pyro.optim.ClippedAdam({"lr": 5e-3, "lrd": 0.05 ** (1 / 400)})
    fit(m, data, steps=400, batch_size=128, optim=optim, progress=False, clear_params=True)
    for t_val in (0.1, 0.3, 0.6):
        t = torch.tensor(t_val)
        alpha, sigma = sde.marginal(t)
        cov_t = (alpha**2 * COV + sigma**2 * torch.eye(2, dtype=torch.float64)).float()
        x_t = alpha * MU.float() + torch.randn(2000, 2) @ torch.linalg.cholesky(cov_t).T
        true = -(x_t - alpha * MU.float()) @ torch.linalg.inv(cov_t)
        with torch.no_grad():
            learned = m.score(x_t, t)
        rel = (learned - true).norm(dim=-1).mean() / true.norm(dim=-1).mean()
        assert rel < 0.15, (t_val, float(rel))
    # a 400-step network: moments within about a fifth of a data standard deviation
    x = sample(m, 2000, "ode", rtol=1e-3, atol=1e-3)
    assert (x.mean(0) - MU.float()).abs().max() < 0.12
    assert (torch.cov(x.T) - COV.float()).abs().max() < 0.08
    true_lp = torch.distributions.MultivariateNormal(MU.float(), COV.float()).log_prob(data[:64])
    lp = probability_flow_log_prob(m, data[:64], rtol=1e-3, atol=1e-3)
    assert abs(float((lp - true_lp).mean())) < 0.1


def test_bad_input():
    net = TimeMLP(2, 8, num_layers=1)
    with pytest.raises(ValueError, match="param must be one of"):
        ScoreModel(net, VPSDE(), (2,), param="noise")
    with pytest.raises(ValueError, match="weighting must be one of"):
        ScoreModel(net, VPSDE(), (2,), weighting="uniform")
    with pytest.raises(ValueError, match="eps .* must lie in"):
        ScoreModel(net, VPSDE(), (2,), eps=0.0)
    m = ScoreModel(net, VPSDE(), (2,))
    with pytest.raises(ValueError, match=r"expects data of shape \(batch, \*\(2,\)\)"):
        Trace_ELBO().loss(m.model, m.guide, torch.zeros(4, 3))
