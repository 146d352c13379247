"""A user's exact denoiser of Gaussian data, its probability-flow density at the data end, and
sampling with a seeded ``torch.Generator``.

The data are N(mu, diag(S^2)), so every forward marginal is Gaussian and the network's best
prediction (noise, clean data, velocity or score) has a closed form at every time. Checked:

* the probability-flow log-density of a DDPM (a user's beta tensor, each parameterization) and
  of score models (VP, sub-VP, VE) equals the forward marginal's density at the data-end time,
  given the marginal at t = 1 as the prior; and with ``eps=0`` for a network predicting the
  score itself (finite at t = 0), the data's own density;
* ``eps=0`` for a network predicting noise, clean data or velocity, whose score divides by
  sigma(0) = 0: the ODE had stopped in torchdiffeq with "AssertionError: underflow in dt 0.0"
  and the predictor-corrector sampler returned NaN draws silently; now one error naming the
  prediction and the SDE;
* ``DDPM.sample(..., generator=g)`` (was "unexpected keyword argument 'generator'") and
  ``FlowMatching.sample`` / ``reflow_pairs`` (was torchdiffeq's "odeint() got an unexpected
  keyword argument 'generator'") repeat their draws from a seeded generator and leave the
  global random state alone.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Normal

from pyro_gen.diffusion import (
    DDPM,
    VESDE,
    VPSDE,
    FlowMatching,
    NoiseSchedule,
    ScoreModel,
    SubVPSDE,
    probability_flow_log_prob,
    reflow_pairs,
    sample,
)
from pyro_gen.diffusion.sde import ScheduleSDE
from pyro_gen.transforms.continuous import cnf

D = torch.float64
T = 20
MU = torch.tensor([1.0, -2.0], dtype=D)
S = torch.tensor([0.5, 1.5], dtype=D)
BETAS = torch.linspace(1e-3, 0.3, T, dtype=D)  # the user's own variance schedule


class ExactGaussian(nn.Module):
    """A user's network for data N(MU, S^2): the best prediction in ``param`` at time
    ``t / time_scale`` of ``sde``."""

    def __init__(self, sde, param: str, time_scale: float = 1.0) -> None:
        super().__init__()
        self.sde, self.param, self.time_scale = sde, param, time_scale
        self.offset = nn.Parameter(torch.zeros((), dtype=D))  # a parameter, as networks have

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.sde.marginal(t.to(x.dtype) / self.time_scale)
        a, s = a[:, None], s[:, None]
        var = a * a * S * S + s * s
        if self.param == "score":
            return -(x - a * MU) / var + self.offset
        eps = s * (x - a * MU) / var + self.offset
        x0 = (x - s * eps) / a
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[self.param]


def marginal(sde, t: float) -> Normal:
    a, s = sde.marginal(torch.tensor(t, dtype=D))
    return Normal(a * MU, (a * a * S * S + s * s).sqrt())


def prior_of(sde):
    return lambda z: marginal(sde, 1.0).log_prob(z).sum(-1)


def ddpm(param: str = "eps") -> DDPM:
    sde = ScheduleSDE(NoiseSchedule(BETAS))
    return DDPM(ExactGaussian(sde, param, T), (2,), BETAS, param=param, data="continuous")


def data(n: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    return MU + S * torch.randn(n, 2, dtype=D)


@pytest.mark.parametrize("param", ["eps", "v"])  # x0 and score: the score models' test
def test_a_ddpms_flow_density_of_gaussian_data_is_the_marginal_at_its_first_step(param):
    m, x = ddpm(param), data()
    sde = ScheduleSDE(m.schedule)
    lp = probability_flow_log_prob(m, x, rtol=1e-7, atol=1e-7, prior_log_prob=prior_of(sde))
    exact = marginal(sde, 1.0 / T).log_prob(x).sum(-1)
    # dopri5 meets the schedule's T knots (kinks of beta'(t)): 4e-4 nats here at 1e-7, where
    # rk4 with steps of 1e-4 gave 2e-14 (the field is exact; the adaptive solve is not)
    assert torch.allclose(lp, exact, atol=1e-3, rtol=0)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(0.01, 10.0)], ids=type)
@pytest.mark.parametrize("param", ["eps", "x0", "v", "score"])
def test_a_score_models_flow_density_of_gaussian_data_is_the_marginal(sde, param):
    sm, x = ScoreModel(ExactGaussian(sde, param), sde, (2,), param=param), data()
    lp = probability_flow_log_prob(sm, x, rtol=1e-8, atol=1e-8, prior_log_prob=prior_of(sde))
    assert torch.allclose(lp, marginal(sde, sm.eps).log_prob(x).sum(-1), atol=1e-6, rtol=0)


def test_a_score_finite_at_time_zero_gives_the_datas_own_density():
    sde, x = VPSDE(), data()
    sm = ScoreModel(ExactGaussian(sde, "score"), sde, (2,), param="score")
    lp = probability_flow_log_prob(
        sm, x, eps=0.0, rtol=1e-8, atol=1e-8, prior_log_prob=prior_of(sde)
    )
    assert torch.allclose(lp, Normal(MU, S).log_prob(x).sum(-1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_eps_zero_where_the_score_divides_by_a_zero_std_is_one_error(param):
    sde = VPSDE()
    models = {
        "DDPM": ddpm(param),
        "score model": ScoreModel(ExactGaussian(sde, param), sde, (2,), param=param),
    }
    x = data(3)
    for what, m in models.items():
        calls = {
            "probability_flow_log_prob": lambda m=m: probability_flow_log_prob(m, x, eps=0.0),
            "'ode'": lambda m=m: sample(m, 3, "ode", eps=0.0),
            "'pc'": lambda m=m: sample(m, 3, "pc", steps=4, eps=0.0),
            "'euler_maruyama'": lambda m=m: sample(
                m, 3, "euler_maruyama", steps=4, eps=0.0, corrector_steps=1
            ),
        }
        for name, call in calls.items():
            with pytest.raises(ValueError, match=rf"{name}.*eps=0\.0, where this model") as e:
                call()
            message = str(e.value)
            assert f"predicts {param!r}" in message and "sigma(0.0) = 0" in message, what
    # the plain predictor never asks for the score at eps: it draws, finite, as before
    assert torch.isfinite(sample(models["DDPM"], 3, "euler_maruyama", steps=4, eps=0.0)).all()


def _draws_repeat_and_leave_the_global_state(draw) -> torch.Tensor:
    state = torch.get_rng_state()
    first = draw(torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # another global state changes nothing
    assert torch.equal(draw(torch.Generator().manual_seed(3)), first)
    assert not torch.equal(draw(torch.Generator().manual_seed(4)), first)
    return first


@pytest.mark.parametrize(
    "options",
    [{}, {"batch_size": 3}, {"sampler": "ddim", "steps": 5, "eta": 1.0}],
    ids=["ancestral", "chunks", "ddim"],
)
def test_a_ddpm_samples_from_a_seeded_generator(options):
    m = ddpm()
    first = _draws_repeat_and_leave_the_global_state(lambda g: m.sample(7, generator=g, **options))
    assert first.shape == (7, 2) and first.dtype == D


def test_a_ddpms_chunks_continue_the_generators_stream():
    from pyro_gen.diffusion import ancestral_sample

    m, g = ddpm(), torch.Generator().manual_seed(0)
    chunks = m.sample(6, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(chunks, torch.cat([ancestral_sample(m, 4, generator=g),
                                          ancestral_sample(m, 2, generator=g)]))  # fmt: skip


def test_flow_matching_draws_its_base_points_from_a_seeded_generator():
    torch.manual_seed(0)
    fm = FlowMatching(cnf(2, (8,), rtol=1e-4, atol=1e-4))
    first = _draws_repeat_and_leave_the_global_state(lambda g: fm.sample(4, generator=g))
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, fm.transport(z))
    x, z2 = reflow_pairs(fm, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(z2, z) and torch.equal(x, first)


def test_the_sampled_bound_takes_every_draw_from_its_generator():
    """L_0 and the other exact steps drew x_t from the global random state: with the same
    seeded generator the total changed with the global seed."""
    from pyro_gen.diffusion import sampled_variational_bound

    m, x = ddpm(), data(6)
    first = _draws_repeat_and_leave_the_global_state(
        lambda g: sampled_variational_bound(m, x, strata=3, exact_steps=2, generator=g)["total"]
    )
    assert first.shape == (6,) and torch.isfinite(first).all()
