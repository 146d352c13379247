"""AutoAmortizedNormal under the members of Pyro's ELBO family that its Pyro-suite port
(test_autoguide_pyro_suite.py) does not run: JitTraceGraph_ELBO against TraceGraph_ELBO
on the same draws, RenyiELBO against the Renyi bound written by hand from the guide's and
the model's traces under a particle plate, and TraceTailAdaptive_ELBO's gradients, on a
model with a global latent beside constrained local ones (as Pyro's test_valid_models
runs each ELBO on models of every shape)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import JitTraceGraph_ELBO, RenyiELBO, TraceGraph_ELBO, TraceTailAdaptive_ELBO
from pyro.poutine.util import site_is_subsample

from pyro_gen.vae import AutoAmortizedNormal


def model(x):
    a = pyro.sample("a", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))
        pyro.sample("x", dist.Normal(z.sum(-1) + w[..., 0], a), obs=x[:, 0])


def data(rows: int) -> torch.Tensor:
    return torch.randn(rows, 3, generator=torch.Generator().manual_seed(rows))


def trained_guide() -> AutoAmortizedNormal:
    """A guide a few steps away from its initialization, so that no term is at a default."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = AutoAmortizedNormal(model, hidden_dims=(8,))
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceGraph_ELBO())
    for _ in range(3):
        svi.step(data(4))
    return guide


def test_jit_trace_graph_elbo_equals_trace_graph_elbo_across_batch_sizes():
    guide = trained_guide()
    jit = JitTraceGraph_ELBO(ignore_jit_warnings=True)
    jit.loss_and_grads(model, guide, data(4))  # compiles, running the program twice
    for rows in (4, 6):
        x = data(rows)
        pyro.set_rng_seed(1)
        compiled = jit.loss_and_grads(model, guide, x)
        pyro.set_rng_seed(1)
        assert compiled == pytest.approx(TraceGraph_ELBO().loss(model, guide, x), rel=1e-5)


def renyi_bound_by_hand(guide, x: torch.Tensor, alpha: float, particles: int) -> float:
    """-(1/(1-alpha)) log mean_k w_k^(1-alpha), log w_k = log p(x, z_k) - log q(z_k | x),
    each particle's terms summed over every site and data row (the global latent couples
    the rows, so Pyro's Renyi bound does not factor over them)."""
    with pyro.plate("particles", particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x)
    log_w = torch.zeros(particles)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                lp = site["fn"].log_prob(site["value"])
                log_w = log_w + sign * lp.reshape(particles, -1).sum(-1)
    log_mean = torch.logsumexp((1 - alpha) * log_w, 0) - math.log(particles)
    return -(log_mean / (1 - alpha)).item()


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_renyi_elbo_is_the_renyi_bound_of_the_guides_draws(alpha):
    guide, x = trained_guide(), data(5)
    elbo = RenyiELBO(alpha=alpha, num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(2)
    loss = elbo.loss(model, guide, x)
    pyro.set_rng_seed(2)
    assert loss == pytest.approx(renyi_bound_by_hand(guide, x, alpha, 7), rel=1e-5)
    # and the loss_and_grads path trains: finite gradients for every encoder weight
    pyro.set_rng_seed(2)
    with poutine.trace(param_only=True) as params:
        assert elbo.loss_and_grads(model, guide, x) == pytest.approx(loss, rel=1e-5)
    grads = [site["value"].unconstrained().grad for site in params.trace.nodes.values()]
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


def test_tail_adaptive_gradients_reach_every_parameter():
    """TraceTailAdaptive_ELBO returns no loss (inf, as in Pyro) and gradients for the
    encoder's weights and the global guide's parameters."""
    guide, x = trained_guide(), data(5)
    elbo = TraceTailAdaptive_ELBO(num_particles=4, vectorize_particles=True)
    with poutine.trace(param_only=True) as params:
        assert elbo.loss_and_grads(model, guide, x) == float("inf")
    names = set(params.trace.nodes)
    assert any(name.startswith("AutoAmortizedNormal.net") for name in names), names
    assert any("a" in name and "net" not in name for name in names), names
    for site in params.trace.nodes.values():
        grad = site["value"].unconstrained().grad
        assert grad is not None and bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0
