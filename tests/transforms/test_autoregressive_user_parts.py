"""Autoregressive layers with a user's parts: Pyro's AutoRegressiveNN as the conditioner, a
user's element-wise map (issue 10: pyro_gen's parts inside the programs Pyro users write).

A Pyro user builds an IAF as ``AffineAutoregressive(AutoRegressiveNN(D, [H]))``; swapping in
``InverseAutoregressive(D, AutoRegressiveNN(D, [H]), Affine())`` kept the network and failed
with "'tuple' object has no attribute 'shape'" (the network returns (mean, log_scale)).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import AutoRegressiveNN

from pyro_gen.transforms import (
    Affine,
    ElementwiseBijection,
    InverseAutoregressive,
    MaskedAutoregressive,
)

D = 3


def _arn(param_dims: list[int]) -> AutoRegressiveNN:
    torch.manual_seed(0)
    return AutoRegressiveNN(D, [16], param_dims=param_dims)


def _closed_form(arn: AutoRegressiveNN, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine IAF step by hand: y = u exp(B tanh(s / B)) + m, (m, s) = arn(u), B = 3."""
    m, s = arn(u)
    log_scale = 3.0 * torch.tanh(s / 3.0)
    return u * log_scale.exp() + m, log_scale.sum(-1)


@pytest.mark.parametrize("layer", [InverseAutoregressive, MaskedAutoregressive])
def test_pyro_arn_as_conditioner_matches_the_closed_form_and_its_jacobian(layer):
    arn = _arn([1, 1])
    t = layer(D, arn, Affine())
    u = torch.randn(5, D, dtype=torch.float32)
    if layer is InverseAutoregressive:  # one pass: the map itself
        y, ladj = _closed_form(arn, u)
        assert torch.allclose(t(u), y, atol=1e-6)
        assert torch.allclose(t.log_abs_det_jacobian(u, t(u)), ladj, atol=1e-5)
    else:  # the inverse is the one-pass direction: u = (x - m(x)) exp(-s(x))
        m, s = arn(u)
        log_scale = 3.0 * torch.tanh(s / 3.0)
        assert torch.allclose(t.inv(u), (u - m) * (-log_scale).exp(), atol=1e-6)
    # the D-pass direction inverts the one-pass one, in Pyro's (random) input order
    x = t(u)
    assert torch.allclose(t.inv(x.clone()), u, atol=1e-5)
    # and the log-det is autograd's, point by point
    for i in range(2):
        jac = torch.autograd.functional.jacobian(t.with_cache(0), u[i])
        ladj = t.with_cache(0).log_abs_det_jacobian(u[i], t(u[i]))
        assert torch.allclose(ladj, jac.det().abs().log(), atol=1e-5)


def test_stacked_pyro_output_is_the_same_layer():
    """param_dims=[2] returns one (..., 2, D) tensor: the same parameters as [1, 1]."""
    split, stacked = _arn([1, 1]), _arn([2])
    stacked.load_state_dict(split.state_dict())
    u = torch.randn(4, D)
    a = InverseAutoregressive(D, split, Affine())
    b = InverseAutoregressive(D, stacked, Affine())
    assert torch.equal(a(u), b(u))


def test_pyro_arn_iaf_trains_as_a_guide_in_a_pyro_program():
    """The Pyro user's guide, IAF layer swapped: SVI moves the ARN's weights and the loss."""
    pyro.clear_param_store()
    arn = _arn([1, 1])
    iaf = InverseAutoregressive(D, arn, Affine())
    target = dist.MultivariateNormal(torch.zeros(D), torch.eye(D) + 0.8)

    def model():
        pyro.sample("z", target)

    def guide():
        pyro.module("iaf", iaf)
        loc = pyro.param("loc", torch.zeros(D))
        base = dist.Normal(loc, 1.0).to_event(1)
        pyro.sample("z", dist.TransformedDistribution(base, [iaf]))

    before = [p.detach().clone() for p in arn.parameters()]
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    torch.manual_seed(1)
    losses = [svi.step() for _ in range(300)]
    assert all(not torch.equal(b, p) for b, p in zip(before, arn.parameters(), strict=True))
    # the ELBO's estimate of KL(q || p) falls (mean of the last 50 against the first 50)
    assert sum(losses[-50:]) / 50 < sum(losses[:50]) / 50 - 0.05


class SummedScale(ElementwiseBijection):
    """A user's scale map that sums its log-derivative, Pyro's log_abs_det_jacobian habit."""

    num_params = 1

    def forward(self, x, params):
        (s,) = params
        return x * s.exp(), s.sum(-1)

    def inverse(self, y, params):
        (s,) = params
        return y * (-s).exp(), s.sum(-1)


class NoParams(ElementwiseBijection):
    def forward(self, x, params):
        return x, torch.zeros_like(x)


def test_a_summed_log_derivative_is_refused_not_summed_again():
    t = InverseAutoregressive(D, AutoRegressiveNN(D, [8], param_dims=[1]), SummedScale())
    with pytest.raises(ValueError, match="do not sum it yourself"):
        t(torch.randn(5, D))


def test_an_elementwise_map_without_num_params_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"NoParams.num_params is 0"):
        InverseAutoregressive(D, AutoRegressiveNN(D, [8]), NoParams())


def test_affine_bound_is_exact_in_float64():
    """B tanh(raw / B) in float64 after .double(): 1/B was rounded in float32 and kept."""
    f = Affine().double()
    raw = torch.linspace(-10, 10, 101, dtype=torch.float64)
    _, log_scale = f(torch.zeros_like(raw), (torch.zeros_like(raw), raw))
    assert torch.allclose(log_scale, 3.0 * torch.tanh(raw / 3.0), rtol=1e-15, atol=0)
