"""The continuous-time variational bound (VDM / likelihood-weighted score matching): on Gaussian
data with the exact score its Monte Carlo estimate equals the closed-form expectation and sits
just above the entropy; the Pyro sites of ``ScoreModel(bound=True)`` give exactly that bound,
whatever the learned schedule's shape between its endpoints; the learned schedule is a
consistent SDE; a trained model's bound is not below its probability-flow NLL."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from pyro_gen.diffusion import (
    VESDE,
    VPSDE,
    LearnedVPSDE,
    ScoreModel,
    SubVPSDE,
    build_ddpm,
    likelihood_bound,
    probability_flow_log_prob,
)
from pyro_gen.infer import fit
from pyro_gen.nn.time_embedding import TimeMLP
from tests.diffusion.closed_form import gaussian, gaussian_expected_bound

torch.set_num_threads(1)

SDES = {
    "vp": VPSDE,
    "ve": lambda: VESDE(0.01, 8.0),
    "subvp": SubVPSDE,
    "learned": lambda: LearnedVPSDE(-10.0, 6.0, bins=4),
}


def _entropy(cf) -> float:
    return float(torch.distributions.MultivariateNormal(cf.mu[0], cf.cov[0]).entropy())


def test_learned_schedule_is_a_consistent_sde():
    torch.manual_seed(0)
    sde = LearnedVPSDE(-8.0, 4.0, bins=4).double()
    with torch.no_grad():
        sde.logits.normal_()
    assert torch.allclose(sde.gamma(torch.tensor([0.0, 1.0], dtype=torch.float64)),
                          torch.tensor([-8.0, 4.0], dtype=torch.float64))  # fmt: skip
    t = torch.rand(64, dtype=torch.float64).requires_grad_()  # a.s. off the bin edges
    gamma = sde.gamma(t)
    assert (sde.gamma(t.sort().values).diff() > 0).all()  # monotone
    (dgamma,) = torch.autograd.grad(gamma.sum(), t)
    assert torch.allclose(dgamma, sde.gamma_prime(t), rtol=1e-10)
    # the marginal obeys d log alpha / dt = f and d sigma^2 / dt = 2 f sigma^2 + g^2
    alpha, sigma = sde.marginal(t)
    (dlog_alpha,) = torch.autograd.grad(alpha.log().sum(), t, retain_graph=True)
    (dvar,) = torch.autograd.grad((sigma**2).sum(), t)
    f, g = sde.drift_coef(t), sde.diffusion(t)
    assert torch.allclose(dlog_alpha, f, rtol=1e-9)
    assert torch.allclose(dvar, 2 * f * sigma**2 + g**2, rtol=1e-9)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(alpha))


@pytest.mark.parametrize("sde_name", list(SDES))
def test_bound_on_a_gaussian_matches_its_closed_form(sde_name):
    torch.manual_seed(1)
    cf = gaussian(SDES[sde_name]())
    x = cf.sample_data(4000)
    out = likelihood_bound(cf, x, eps=1e-3, time_samples=4)
    total = out["total"]
    expected = gaussian_expected_bound(cf, 1e-3)
    se = float(total.std()) / math.sqrt(len(total))
    assert abs(float(total.mean()) - expected) < 4 * se, (float(total.mean()), expected, se)
    # the exact score makes the bound nearly tight: it never goes below the entropy, and for
    # VE stays within what sigma_min = 0.01 smoothing and the N(0, 8^2) prior cost
    gap = expected - _entropy(cf)
    assert 0 <= gap < (0.02 if sde_name == "ve" else 0.003), gap
    assert torch.allclose(out["total"], out["prior"] + out["reconstruction"] + out["diffusion"])


class ExactScore(torch.nn.Module):
    """The closed-form score as a network ``net(x, t)`` (no time embedding: fed t itself)."""

    def __init__(self, cf) -> None:
        super().__init__()
        self.cf = cf

    def forward(self, x, t):
        return self.cf.score(x, t)


def test_vdm_sites_give_the_bound_whatever_the_schedule_between_its_endpoints():
    # Kingma et al.: in continuous time the bound depends on the schedule only through
    # gamma(0) and gamma(1); the model/guide pair must give that bound as its negative ELBO
    torch.manual_seed(2)
    pyro.set_rng_seed(2)
    estimates = []
    for shape in ("linear", "random"):
        sde = LearnedVPSDE(-8.0, 5.0, bins=4).double()
        if shape == "random":
            with torch.no_grad():
                sde.logits.copy_(torch.tensor([1.5, -1.0, 0.5, -2.0]))
        cf = gaussian(sde)
        m = ScoreModel(ExactScore(cf), sde, (2,), param="score", weighting="likelihood",
                       eps=0.0, bound=True, time_samples=4)  # fmt: skip
        chunks = [cf.sample_data(200) for _ in range(12)]
        losses = torch.tensor([TraceMeanField_ELBO().loss(m.model, m.guide, c) / 200
                               for c in chunks])  # fmt: skip
        expected = gaussian_expected_bound(cf, 0.0)
        se = float(losses.std()) / math.sqrt(len(losses))
        assert abs(float(losses.mean()) - expected) < 4 * se, (shape, float(losses.mean()), se)
        estimates.append(expected)
    assert abs(estimates[0] - estimates[1]) < 1e-6  # the closed form does not see the shape
    tr = poutine.trace(m.model).get_trace(chunks[0])
    assert {"t", "x_t", "dsm", "x_1", "x_eps", "x"} <= set(tr.nodes)
    assert tr.nodes["x"]["is_observed"]


def test_trained_bound_is_not_below_the_probability_flow_nll():
    # a VDM (learned schedule, bound as the objective) trained briefly through fit: its bound
    # and its ODE NLL on the same points, paired; the bound must not be lower beyond MC error
    torch.manual_seed(3)
    pyro.set_rng_seed(3)
    cf = gaussian(VPSDE())
    data = cf.sample_data(4096).float()
    m = ScoreModel(TimeMLP(2, 32, num_layers=2), LearnedVPSDE(-9.0, 6.0, bins=4), (2,),
                   weighting="likelihood", eps=0.0, bound=True, time_samples=2)  # fmt: skip
    ends0 = m.sde.ends.detach().clone()
    optim = pyro.optim.ClippedAdam({"lr": 5e-3, "lrd": 0.1 ** (1 / 300)})
    fit(m, data, steps=300, batch_size=128, optim=optim, loss=TraceMeanField_ELBO(),
        progress=False, clear_params=True)  # fmt: skip
    assert not torch.equal(m.sde.ends.detach(), ends0)  # the endpoints are trained
    x = data[:64]
    bound = likelihood_bound(m, x, time_samples=32)["total"]
    nll = -probability_flow_log_prob(m, x, rtol=1e-4, atol=1e-4)
    diff = bound - nll
    se = float(diff.std()) / math.sqrt(len(diff))
    assert float(diff.mean()) > -3 * se, (float(diff.mean()), se)
    true_nll = -torch.distributions.MultivariateNormal(cf.mu[0].float(), cf.cov[0].float()
                                                       ).log_prob(x)  # fmt: skip
    assert float((nll - true_nll).mean()) < 0.15  # the ODE density is a fair model


def test_bad_input():
    cf = gaussian(VPSDE())
    with pytest.raises(ValueError, match=r"sigma\(0.0\) = 0: raise eps"):
        likelihood_bound(cf, torch.zeros(2, 2), eps=0.0)
    with pytest.raises(ValueError, match="time_samples must be a whole number"):
        likelihood_bound(cf, torch.zeros(2, 2), time_samples=0)
    with pytest.raises(ValueError, match=r"expected data of shape \(batch, \*\(2,\)\)"):
        likelihood_bound(cf, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="models discrete pixels: use variational_bound"):
        likelihood_bound(build_ddpm((4, 4), timesteps=4, base_channels=4), torch.zeros(1, 4, 4))
    with pytest.raises(TypeError, match="cannot provide a score"):
        likelihood_bound(torch.nn.Linear(2, 2), torch.zeros(2, 2))
    net = TimeMLP(2, 8, num_layers=1)
    with pytest.raises(ValueError, match="bound=True trains the variational bound"):
        ScoreModel(net, VPSDE(), (2,), bound=True)
    with pytest.raises(ValueError, match=r"eps .* must lie in \(0, 1\) for VPSDE"):
        ScoreModel(net, VPSDE(), (2,), eps=0.0)
    # sigma(0) > 0: t = 0 is allowed
    ScoreModel(net, LearnedVPSDE(), (2,), eps=0.0, weighting="likelihood", bound=True)
    with pytest.raises(ValueError, match="learnable schedule, which only the variational bound"):
        ScoreModel(net, LearnedVPSDE(), (2,), eps=0.0, weighting="likelihood")
    with pytest.raises(ValueError, match="gamma_min .* must be below gamma_max"):
        LearnedVPSDE(3.0, -3.0)
    with pytest.raises(ValueError, match="bins must be a whole number"):
        LearnedVPSDE(bins=0)


def test_an_int_event_shape_and_integer_data_get_what_a_user_expects():
    """``build_ddpm(2)`` raised "'int' object is not iterable"; integer data went on into the
    ELBO, where Pyro's Normal refused its noise scale ("Expected scale > 0")."""
    from pyro_gen.diffusion import build_ddpm

    ddpm = build_ddpm(2, timesteps=10, hidden_dim=8)
    assert ddpm.event_shape == (2,)
    with pytest.raises(TypeError, match=r"data must be floating point, got torch.int64.*/ 255"):
        ddpm.model(torch.ones(4, 2, dtype=torch.long))
