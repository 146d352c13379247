"""FlowMatching's time laws and loss weighting: the ``"t"`` site follows the chosen law (model and
guide alike, so the ELBO stays the regression loss), and ``weighting="noise"`` is the squared
error of the base draw implied by the velocity."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_gen.diffusion import FlowMatching
from pyro_gen.transforms.continuous import cnf

torch.set_num_threads(1)


def draw_times(fm: FlowMatching, n: int) -> torch.Tensor:
    return poutine.trace(fm.guide).get_trace(torch.zeros(n, 2)).nodes["t"]["value"].flatten()


def test_time_laws():
    pyro.set_rng_seed(0)
    n = 40_000
    s = draw_times(FlowMatching(cnf(2, (8,))), n)
    assert s.min() >= 0 and s.max() <= 1
    assert abs(s.mean() - 0.5) < 0.01 and abs(s.var() - 1 / 12) < 0.003

    u = draw_times(FlowMatching(cnf(2, (8,)), time_sampling="logit_normal"), n).logit()
    assert abs(u.mean()) < 0.03 and abs(u.std() - 1.0) < 0.03  # Esser et al.'s (0, 1)
    fm = FlowMatching(cnf(2, (8,)), time_sampling="logit_normal", time_params=(-1.0, 1.5))
    u = draw_times(fm, n).logit()
    assert abs(u.mean() + 1.0) < 0.04 and abs(u.std() - 1.5) < 0.04

    # the default logit-uniform law: noise-to-signal s / (1 - s) log-uniform on [0.01, 12]
    u = draw_times(FlowMatching(cnf(2, (8,)), time_sampling="logit_uniform"), n).logit().double()
    assert u.min() >= -4.6 - 1e-4 and u.max() <= 2.5 + 1e-4
    assert abs(math.exp(-4.6) - 0.01) < 1e-4 and abs(math.exp(2.5) - 12.18) < 0.01
    assert abs(u.mean() - (-4.6 + 2.5) / 2) < 0.04 and abs(u.var() - 7.1**2 / 12) < 0.15


@pytest.mark.parametrize("time_sampling", ["logit_normal", "logit_uniform"])
def test_noise_weighting_is_the_implied_base_draw_error(time_sampling):
    # on the path x_s = (1 - s) x + c_s z the target is u = (z - x_s) / (1 - s) for any
    # sigma_min, so (1 - s)^2 |f - u|^2 = |z_hat - z|^2 with z_hat = x_s + (1 - s) f
    torch.manual_seed(1)
    fm = FlowMatching(
        cnf(2, (8,)).double(),
        sigma_min=0.05,
        time_samples=3,
        time_sampling=time_sampling,
        weighting="noise",
    )
    x = torch.randn(5, 2, dtype=torch.float64)
    pyro.set_rng_seed(2)
    loss = Trace_ELBO().loss(fm.model, fm.guide, x)  # the time law's terms cancel
    pyro.set_rng_seed(2)
    tr = poutine.trace(fm.guide).get_trace(x)
    s, z = tr.nodes["t"]["value"][..., None], tr.nodes["z"]["value"]
    x_s = (1 - s) * x + (0.05 + 0.95 * s) * z
    with torch.no_grad():
        f = fm.flow.dynamics(x_s.reshape(-1, 2), s.reshape(-1)).reshape(3, 5, 2)
    z_hat = x_s + (1 - s) * f
    expected = 0.5 * (z_hat - z).pow(2).sum(-1).mean(0).sum()
    assert abs(loss - float(expected)) < 1e-8 * max(1.0, abs(loss))


def test_bad_time_options():
    f = cnf(2, (8,))
    with pytest.raises(ValueError, match="time_sampling must be one of"):
        FlowMatching(f, time_sampling="beta")
    with pytest.raises(ValueError, match="weighting must be one of"):
        FlowMatching(f, weighting="snr")
    with pytest.raises(ValueError, match="'uniform' takes no time_params"):
        FlowMatching(f, time_params=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"must be \(loc, scale > 0\) of logit s"):
        FlowMatching(f, time_sampling="logit_normal", time_params=(0.0, 0.0))
    with pytest.raises(ValueError, match=r"must be \(low, high > low\) of logit s"):
        FlowMatching(f, time_sampling="logit_uniform", time_params=(2.0, -2.0))


def test_a_draw_at_the_logit_laws_edge_gives_a_finite_loss():
    # u = 2.4999998 < b = 2.5, but logit(sigmoid(u)) rounds to >= 2.5 in float32, outside the
    # base's support: unmasked, model and guide would both score -inf and the ELBO be NaN
    fm = FlowMatching(cnf(2, (8,)), time_sampling="logit_uniform", weighting="noise")
    x = torch.randn(4, 2)
    edge = torch.sigmoid(torch.tensor(2.4999998))
    assert torch.isinf(fm._time_law(torch.zeros(())).log_prob(edge))
    guide = poutine.trace(fm.guide).get_trace(x)
    guide.nodes["t"]["value"] = edge.expand(1, 4)
    model = poutine.trace(poutine.replay(fm.model, trace=guide)).get_trace(x)
    assert torch.isfinite(model.log_prob_sum() - guide.log_prob_sum())
