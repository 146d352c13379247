"""A pyro_gen flow as a learned prior reparameterized with Pyro's ``TransformReparam``.

``poutine.reparam(model, {"z": TransformReparam()})`` moves a ``TransformedDistribution``
latent to its base (``z_base``) and makes ``z`` a deterministic push-forward. The joint
density of the reparameterized program must be the original program's at ``z = T(z_base)``
plus :math:`\\log|\\det \\partial T / \\partial z_{base}|`, with that log-det taken by autograd
(float64); and the push-forward must be the transform itself.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.infer.reparam import TransformReparam

from pyro_gen import transforms as T

F64 = torch.float64
FLOWS = {
    "iaf": lambda: T.inverse_autoregressive(3, [8]),
    "maf": lambda: T.masked_autoregressive(3, [8]),
    "affine_coupling": lambda: T.affine_coupling(3, hidden_dims=[8]),
    "spline_coupling": lambda: T.spline_coupling(3, num_bins=4, hidden_dims=[8]),
    "actnorm": lambda: T.ActNorm(3),
    "residual": lambda: T.residual_block(3, [8], logdet="exact", tol=1e-12),
    "cnf": lambda: T.cnf(3, (8,), trace="exact", rtol=1e-9, atol=1e-9),
}


_BASE = dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1)


def _flow(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    t = FLOWS[name]().double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    t.inv(torch.randn(16, 3, dtype=F64))  # ActNorm's data-dependent start
    return t.eval()


def _model(prior: dist.Distribution):
    def model(y: torch.Tensor) -> None:
        with pyro.plate("groups", y.shape[0]):
            z = pyro.sample("z", prior)
            pyro.sample("y", dist.Normal(z, 0.5).to_event(1), obs=y)

    return model


def _autograd_ladj(t, u: torch.Tensor) -> torch.Tensor:
    jac = [torch.autograd.functional.jacobian(t, row) for row in u]
    return torch.stack([torch.linalg.slogdet(j)[1] for j in jac])


@pytest.mark.parametrize("name", list(FLOWS))
def test_transform_reparam_is_the_change_of_variables(name: str) -> None:
    t = _flow(name)
    prior = dist.TransformedDistribution(
        dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1), [t]
    )
    model = _model(prior)
    reparam = poutine.reparam(model, config={"z": TransformReparam()})
    y = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    pyro.clear_param_store()
    guide = AutoNormal(reparam, init_scale=0.5)
    guide_trace = poutine.trace(guide).get_trace(y)
    u = guide_trace.nodes["z_base"]["value"].detach()
    model_trace = poutine.trace(poutine.replay(reparam, trace=guide_trace)).get_trace(y)
    z = model_trace.nodes["z"]["value"]
    torch.testing.assert_close(z, t(u.clone()))
    original = poutine.trace(poutine.condition(model, data={"z": z.detach()})).get_trace(y)
    expected = original.log_prob_sum() + _autograd_ladj(t, u).sum()
    torch.testing.assert_close(model_trace.log_prob_sum(), expected, rtol=1e-9, atol=1e-7)


def test_svi_trains_a_flow_prior_reparameterized_by_transform_reparam() -> None:
    # the flow's parameters reach the loss through the push-forward z = T(z_base)
    t = _flow("affine_coupling")
    prior = dist.TransformedDistribution(
        dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1), [t]
    )
    inner = _model(prior)

    def model(y: torch.Tensor) -> None:
        pyro.module("prior_flow", t)
        inner(y)

    reparam = poutine.reparam(model, config={"z": TransformReparam()})
    y = torch.randn(4, 3, dtype=F64)
    pyro.clear_param_store()
    guide = AutoNormal(reparam)
    loss = Trace_ELBO().differentiable_loss(reparam, guide, y)
    loss.backward()
    grads = [p.grad for p in t.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
