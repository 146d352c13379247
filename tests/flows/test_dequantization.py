"""Dequantization: the ELBO is the documented bound, and a learned q(u|x) tightens it."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions.transforms import AffineTransform
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch.distributions import Normal, constraints

from pyro_gen.flows.base import FlowModel
from pyro_gen.transforms.dequantization import (
    ScaledSigmoid,
    VariationalDequantization,
)

K = 4
LOC, SCALE = 0.45, 0.12


def _elbo_terms(model: FlowModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    guide_tr = poutine.trace(model.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(x)
    model_tr.compute_log_prob()
    guide_tr.compute_log_prob()
    site = model.dequantization.site
    u = guide_tr.nodes[site]["value"]
    elbo = (
        sum(model_tr.nodes[n]["log_prob"] for n in (site, model.site))
        - guide_tr.nodes[site]["log_prob"]
    )
    return elbo, u


def _true_log_prob(x: torch.Tensor) -> torch.Tensor:
    base = Normal(LOC, SCALE)
    return torch.log(base.cdf((x + 1) / K) - base.cdf(x / K)).sum(-1)


def _model(dequantization) -> FlowModel:
    return FlowModel(
        (2,),
        [AffineTransform(LOC, SCALE, event_dim=1)],
        dequantization=dequantization,
        num_bins=K,
    )


def test_scaled_sigmoid_logdet_and_inverse():
    t = ScaledSigmoid(alpha=0.05, event_dim=1)
    y = torch.randn(3, 4, dtype=torch.float64)
    x = t(y)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(t, y[i])
        torch.testing.assert_close(t.log_abs_det_jacobian(y, x)[i], torch.linalg.slogdet(jac)[1])
    torch.testing.assert_close(t.inv(x), y)
    assert torch.isfinite(t.inv(torch.tensor([0.0, 1.0]))).all()
    with pytest.raises(ValueError):
        ScaledSigmoid(alpha=0.6)


def test_uniform_elbo_is_dequantized_log_prob():
    model = _model("uniform")
    x = torch.randint(0, K, (6, 2)).float()
    elbo, u = _elbo_terms(model, x)
    flow = Normal(LOC, SCALE)
    expected = flow.log_prob((x + u) / K).sum(-1) - 2 * math.log(K)
    torch.testing.assert_close(elbo, expected)
    assert ((u >= 0) & (u < 1)).all()


def test_bad_discrete_input_raises():
    model = _model("uniform")
    with pytest.raises(ValueError, match="integers"):
        model.model(torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="integers"):
        model.model(torch.full((2, 2), float(K)))


def test_variational_dequantization_tightens_the_bound():
    torch.manual_seed(0)
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [1.0, 1.0], [3.0, 0.0]]).repeat(4, 1)
    true_lp = _true_log_prob(x).mean()
    uniform = _model("uniform")
    uni_elbo = torch.stack([_elbo_terms(uniform, x)[0].mean() for _ in range(20)]).mean()
    model = _model(VariationalDequantization((2,), K, hidden_dims=(32,), num_layers=2))
    svi = SVI(model.model, model.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(150):
        svi.step(x)
    with torch.no_grad():
        var_elbo = torch.stack([_elbo_terms(model, x)[0].mean() for _ in range(20)]).mean()
    gap_uniform, gap_var = true_lp - uni_elbo, true_lp - var_elbo
    assert gap_uniform > 0.2  # the uniform bound is loose for a peaked density
    assert -0.02 < gap_var < 0.5 * gap_uniform  # still a bound, and much tighter
    assert len(pyro.get_param_store()) > 0


def test_variational_dequantization_on_an_image_flow():
    from pyro_gen.flows import RealNVP

    flow = RealNVP(
        (4, 4),
        num_layers=1,
        hidden_channels=4,
        num_blocks=1,
        dequantization="variational",
        num_bins=17,
    )
    x = torch.randint(0, 17, (8, 4, 4))
    svi = SVI(flow.model, flow.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    assert math.isfinite(svi.step(x))
    names = set(pyro.get_param_store().keys())
    assert any(n.startswith("realnvp.dequantization$$$") for n in names)
    assert any(n.startswith("realnvp$$$") for n in names)
    # the guide's noise lives in (0, 1) and has the data's shape
    u = poutine.trace(flow.guide).get_trace(x).nodes["dequantization_noise"]["value"]
    assert u.shape == x.shape and ((u > 0) & (u < 1)).all()


@pytest.mark.parametrize("alpha", [0.05, 1e-6])
def test_image_density_is_logit_space_density_plus_logit_logdet(alpha):
    # A standard normal in logit space pushed to pixels: its pixel log-density must be the
    # normal's at logit(x) plus log|d logit / dx| as pyro_gen.data computes it on its own, so
    # bits/dim and logit-space figures of image flows rest on the right change of variables.
    from pyro_gen.data import logit_transform, uniform_dequantize
    from pyro_gen.flows.base import pixel_output

    x = uniform_dequantize(torch.randint(0, 256, (5, 4, 4))).double()
    flow = FlowModel((4, 4), pixel_output((4, 4), alpha)).double()
    y, log_det = logit_transform(x, alpha)
    expected = Normal(0.0, 1.0).log_prob(y).sum((-2, -1)) + log_det
    torch.testing.assert_close(flow.log_prob(x), expected)
    bpd = -(expected.mean() - 16 * math.log(256)) / (16 * math.log(2))
    torch.testing.assert_close(flow.bits_per_dim(x), bpd)


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_dequantized_model_runs_without_its_guide(dequantization):
    # the prior on the noise is a proper distribution: Predictive and prior sampling work
    model = _model(dequantization)
    x = torch.randint(0, K, (5, 2)).float()
    tr = poutine.trace(model.model).get_trace(x)
    u = tr.nodes[model.dequantization.site]["value"]
    assert u.shape == (5, 2) and bool(((u >= 0) & (u < 1)).all())
    tr.compute_log_prob()
    torch.testing.assert_close(
        tr.nodes[model.dequantization.site]["log_prob"], torch.zeros(5)
    )  # density 1 on the unit cube, as the bound in the module docstring needs
    samples = pyro.infer.Predictive(model.model, num_samples=3)(x)
    assert samples[model.dequantization.site].shape == (3, 5, 2)
    prior = pyro.infer.Predictive(model.model, num_samples=4)(None, num_samples=2)
    assert prior[model.site].shape == (4, 2, 2)


def test_variational_dequantization_guide_declares_its_true_support():
    """q(u | x) lies in (0, 1) per element, and says so: its support was the reshape's
    codomain (all reals), so Pyro's checks and reparameterizations that read a site's support
    saw an unbounded site."""
    deq = VariationalDequantization((2, 3), num_bins=4, hidden_dims=(8,))
    x = torch.randint(0, 4, (5, 2, 3)).float()
    q = deq.guide_distribution(x)
    u = q.rsample()
    assert q.support.check(u).all() and not q.support.check(u + 1.0).any()
    assert isinstance(q.support.base_constraint, constraints.interval)
    # the same density as with the reshape last: the sigmoid is elementwise
    *body, reshape, sigmoid = q.transforms
    before = pyro.distributions.TransformedDistribution(q.base_dist, [*body, sigmoid, reshape])
    torch.testing.assert_close(before.log_prob(u), q.log_prob(u))


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_a_float64_model_takes_integer_data(dequantization):
    # integer pixels carry no float dtype: the noise takes the model's (it took the default,
    # float32, and a .double() flow then refused it); the bound is that of the same data
    # given as float64
    from pyro_gen.flows import build

    torch.manual_seed(0)
    model = build("nice", (2,), num_layers=2, hidden_dims=(4,), dequantization=dequantization)
    model = model.double()
    x = torch.randint(0, 256, (5, 2))
    pyro.set_rng_seed(1)
    elbo_int, u = _elbo_terms(model, x)
    pyro.set_rng_seed(1)
    elbo_float, _ = _elbo_terms(model, x.double())
    assert u.dtype == torch.float64 and elbo_int.dtype == torch.float64
    torch.testing.assert_close(elbo_int, elbo_float, atol=0, rtol=0)
