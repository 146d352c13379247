"""Denoising score matching: equal to explicit score matching up to a constant on a Gaussian,
the ScoreModel's Pyro sites give exactly that loss, the likelihood-weighted objective of a wrong
score bounds the probability-flow NLL, and fit trains a usable score."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO, TraceMeanField_ELBO

from pyro_gen.diffusion import (
    VESDE,
    VPSDE,
    LearnedVPSDE,
    ScoreModel,
    dsm_loss,
    dsm_weight,
    likelihood_bound,
    probability_flow_log_prob,
    sample,
)
from pyro_gen.infer import fit
from pyro_gen.nn.time_embedding import TimeMLP
from tests.diffusion.closed_form import MixtureScore, gaussian

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


def test_vectorized_particles_give_each_particle_its_own_dsm_loss():
    # Pyro's vectorized particles put a plate at dim -3 around model and guide: "t" is then
    # (P, K, B) and each particle's DSM term must use its own times against the same data
    torch.manual_seed(1)
    sde = VPSDE()
    A, b = torch.randn(2, 2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    m = ScoreModel(LinearScore(A, b), sde, (2,), param="score", time_samples=3)
    x = torch.randn(5, 2, dtype=torch.float64)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=2)
    pyro.set_rng_seed(2)
    loss = elbo.loss(m.model, m.guide, x)
    pyro.set_rng_seed(2)
    with pyro.plate("particles", 4, dim=-3):
        guide_tr = poutine.trace(m.guide).get_trace(x)
    t, x_t = guide_tr.nodes["t"]["value"], guide_tr.nodes["x_t"]["value"]
    assert t.shape == (4, 3, 5) and x_t.shape == (4, 3, 5, 2)
    alpha, sigma = sde.marginal(t)
    noise = (x_t - alpha[..., None] * x) / sigma[..., None]
    terms = dsm_loss(m.score, sde, x.expand(4, 3, 5, 2), t, noise, 1)  # (P, K, B)
    expected = terms.mean(1).sum(-1).mean(0)
    assert abs(loss - float(expected.detach())) < 1e-8 * max(1.0, abs(loss))


def test_predictive_draws_from_the_model_without_data():
    # data N(0, I) under the VP SDE: the score is -x at every time, so the program's "x" is
    # N(0, I); a vectorized Predictive must give each predictive sample its own draws
    eye = torch.eye(2, dtype=torch.float64)
    m = ScoreModel(LinearScore(-eye, torch.zeros(2, dtype=torch.float64)), VPSDE(), (2,),
                   param="score")  # fmt: skip
    pyro.set_rng_seed(0)
    draws = Predictive(m.model, num_samples=3, parallel=True)(num_samples=400)
    x, x1 = draws["x"], draws["x_1"]
    assert x.shape == x1.shape == (3, 400, 2) and x.dtype == torch.float64
    assert not torch.equal(x[0], x[1])
    assert float(x.mean().abs()) < 0.1 and float((x.std() - 1).abs()) < 0.1
    assert Predictive(m.model, num_samples=2)(num_samples=5)["x"].shape == (2, 5, 2)


class OtherGaussianScore(torch.nn.Module):
    """The exact score of a diffused Gaussian q that is not the data's, as ``net(x, t)``."""

    def __init__(self, q: MixtureScore) -> None:
        super().__init__()
        self.q = q

    def forward(self, x, t):
        return self.q.score(x, t)


def test_likelihood_weighted_objective_of_a_wrong_score_bounds_the_ode_nll():
    # Data p = N(MU, COV), score the exact one of q_t, q = N(m, S) != p diffused by the same
    # SDE. The generative SDE and the probability-flow ODE then both have the marginals q_t, so
    # the ODE NLL is -log q_eps(x); the likelihood-weighted objective (the continuous-time
    # bound: prior + reconstruction + int g^2 / 2 ||s + eps / sigma||^2) bounds it, tightly up
    # to KL(q_1 || N(0, I)) (the forward bridges given x_0 do not depend on the data law). Its
    # expectation is the cross-entropy E_p[-log q_eps] (1.74), not the data entropy (1.41): a
    # bound that were wrong for scores other than the data's would miss it.
    torch.manual_seed(4)
    pyro.set_rng_seed(4)
    sde = VPSDE()
    p = gaussian(sde)
    q = MixtureScore(sde, [1.0], [[0.8, -0.3]], [[[0.5, 0.1], [0.1, 0.4]]])
    m = ScoreModel(OtherGaussianScore(q), sde, (2,), param="score", weighting="likelihood",
                   bound=True, time_samples=4)  # fmt: skip
    x = p.sample_data(20_000)
    mean_eps, cov_eps = q.components(torch.tensor(m.eps))
    q_eps = torch.distributions.MultivariateNormal(mean_eps[0], cov_eps[0])
    cross_entropy = float(-q_eps.log_prob(x).mean())
    entropy = float(torch.distributions.MultivariateNormal(p.mu[0], p.cov[0]).entropy())
    assert cross_entropy - entropy > 0.3  # q is far enough from p to tell the two apart
    # the bound's estimator (stratified log-SNR times) and the model's negative ELBO (its
    # training objective: uniform times, g^2-weighted DSM as a Pyro factor), both in nats
    bound = likelihood_bound(m, x, time_samples=16)["total"]
    se = float(bound.std()) / math.sqrt(len(bound))
    assert 4 * se < 0.16 and abs(float(bound.mean()) - cross_entropy) < 4 * se, (bound.mean(), se)
    elbo = torch.tensor([TraceMeanField_ELBO().loss(m.model, m.guide, c) / len(c)
                         for c in x.split(2000)])  # fmt: skip
    se_elbo = float(elbo.std()) / math.sqrt(len(elbo))
    assert abs(float(elbo.mean()) - cross_entropy) < 4 * se_elbo, (float(elbo.mean()), se_elbo)
    # the ODE NLL is -log q_eps pointwise (up to the N(0, I) prior against q_1), so below
    nll = -probability_flow_log_prob(m, x[:32], rtol=1e-5, atol=1e-5)
    assert torch.allclose(nll, -q_eps.log_prob(x[:32]), atol=0.03)
    assert float(bound.mean()) > float(nll.mean()) - 4 * se


class TimeConditionedScore(torch.nn.Module):
    """A score that depends on the time t, not on the noise level: -x (0.5 + 2 t)."""

    def forward(self, x, t):
        return -x * (0.5 + 2 * t)[..., None]


def test_learned_schedule_interior_warps_the_time_a_network_sees():
    # the bound is invariant to the schedule between its endpoints only for a score given as a
    # function of the noise level (tests/diffusion/test_bound.py); a ScoreModel's network sees t,
    # so the interior changes which noise level it is asked at, and the bound with it
    torch.manual_seed(5)
    x = gaussian(VPSDE()).sample_data(1000)
    totals = []
    for logits in ([0.0, 0.0, 0.0, 0.0], [1.5, -1.0, 0.5, -2.0]):
        sde = LearnedVPSDE(-8.0, 5.0, bins=4).double()
        with torch.no_grad():
            sde.logits.copy_(torch.tensor(logits))
        m = ScoreModel(TimeConditionedScore(), sde, (2,), param="score", weighting="likelihood",
                       eps=0.0, bound=True)  # fmt: skip
        gen = torch.Generator().manual_seed(0)  # the same noise levels and draws for both
        totals.append(likelihood_bound(m, x, time_samples=8, generator=gen)["total"])
    diff = totals[0] - totals[1]
    assert float(diff.mean()) > 10 * float(diff.std()) / math.sqrt(len(diff)), float(diff.mean())


class RecordsTimes(torch.nn.Module):
    """A user's score network: a plain MLP fed [x, t]; keeps the times it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.f = torch.nn.Sequential(
            torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2)
        )
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t):
        self.seen.append(t.detach())
        return self.f(torch.cat([x, t.expand(x.shape[:-1]).unsqueeze(-1)], -1))


def test_a_users_network_sees_the_time_itself_and_a_time_embedding_the_steps():
    # Every network was fed 1000 t, the time_scale=1000 run below: this plain MLP of a
    # user's then drew Euler-Maruyama samples a median 35 units from the origin, against
    # 0.76 fed t itself (this seed; 40 epochs, far from converged either way).
    torch.manual_seed(0)
    x = torch.cat([torch.randn(500, 2) * 0.1 + 1, torch.randn(500, 2) * 0.1 - 1])
    radius = {}
    for time_scale in (None, 1000.0):
        torch.manual_seed(0)
        pyro.set_rng_seed(0)
        net = RecordsTimes()
        m = ScoreModel(net, VPSDE(), (2,), time_scale=time_scale)
        fit(m, x, epochs=40, batch_size=100, progress=False, clear_params=True)
        drawn = m.sample(500, sampler="euler_maruyama", steps=100)
        radius[time_scale] = float(drawn.norm(dim=-1).median())
        if time_scale is None:
            seen = torch.cat(net.seen)
            assert float(seen.min()) >= m.eps and float(seen.max()) <= 1.0
            assert m.time_scale == 1.0
    assert radius[None] < 2.0 < 20.0 < radius[1000.0], radius  # the blobs' points: 1.41
    assert ScoreModel(TimeMLP(2, 8), VPSDE(), (2,)).time_scale == 1000.0
    assert ScoreModel(torch.nn.Sequential(TimeMLP(2, 8)), VPSDE(), (2,)).time_scale == 1000.0
    assert ScoreModel(net, VPSDE(), (2,), time_scale=50.0).time_scale == 50.0


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
