"""pyro_gen flows as guides and priors inside the Pyro programs of Pyro's flow and SVI
tutorials: the loss of an ``AutoNormalizingFlow`` guide, of a VAE with a flow prior (under
``poutine.scale``) and of a CVAE with a conditional flow guide is the bound computed by hand,
under ``Trace_ELBO`` with several (vectorized) particles, ``TraceMeanField_ELBO``,
``TraceGraph_ELBO`` and ``RenyiELBO``; ``Predictive`` draws the CVAE's guide per context.

Each program is one a Pyro user writes, unchanged (flow_user_programs.py holds those shared
by several files). Every loss is checked against the same bound computed by hand from the
values the guide drew, with each flow density taken by the change of variables through an
autograd Jacobian (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from pyro.infer import Predictive, RenyiELBO
from pyro.infer.autoguide import AutoNormalizingFlow

from tests.transforms.flow_user_programs import (
    _CVAE,
    ELBOS,
    F64,
    _autograd_log_density,
    _FlowPriorVAE,
    _global_local_log_joint,
    _global_local_model,
    _guide_flow,
    _normal,
    _recording,
)


@pytest.mark.parametrize("elbo", [*ELBOS, "renyi"])
def test_autonormalizingflow_loss_is_the_change_of_variables_bound(elbo: str) -> None:
    """Pyro's ``AutoNormalizingFlow`` with a pyro_gen flow over a global and N local
    latents: the loss is minus the mean over particles of ``log p(x, mu, z) - log q``, with
    ``q`` by autograd; vectorized particles are distinct draws, not one broadcast."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, dtype=F64)
    guide = AutoNormalizingFlow(_global_local_model, _guide_flow)
    guide(x)  # builds the flow (ActNorm initialises on this first draw)
    seen: list = []
    objective = RenyiELBO(0.5, num_particles=3, max_plate_nesting=1) if elbo == "renyi" else None
    objective = objective or ELBOS[elbo]()
    loss = objective.loss(_global_local_model, _recording(guide, seen), x)

    mu = torch.cat([s["mu"].reshape(-1, 2) for s in seen])
    z = torch.cat([s["z"].reshape(-1, 3, 2) for s in seen])
    assert mu.dtype == F64 and len(mu) in (2, 3) and len(set(mu[:, 0].tolist())) == len(mu)
    latent = torch.cat([mu, z.reshape(len(z), -1)], -1)  # AutoContinuous packs sites in order
    base = guide.get_base_dist()
    log_q = _autograd_log_density(list(guide.get_transform().parts), base.log_prob, latent)
    log_w = _global_local_log_joint(x, mu, z) - log_q
    expected = -log_w.mean()
    if elbo == "renyi":  # the bound of order alpha = 1/2: a log-mean of w^(1/2), times 2
        expected = -2 * (torch.logsumexp(log_w / 2, 0) - math.log(len(log_w)))
    assert math.isclose(loss, float(expected), rel_tol=1e-12)


@pytest.mark.parametrize("elbo", list(ELBOS))
def test_vae_with_a_flow_prior_loss_is_the_scaled_bound(elbo: str) -> None:
    """The loss is ``N / B`` times minus the per-particle mean of ``sum_i log p(x_i | z_i)
    + log p(z_i) - log q(z_i | x_i)``, ``p(z)`` by autograd; the prior's parameters get
    gradients from ``loss_and_grads``."""
    torch.manual_seed(1)
    vae = _FlowPriorVAE(n_total=20)
    x = torch.randn(4, 3, dtype=F64)
    seen: list = []

    def guide(x):
        z = vae.guide(x)
        seen.append(z.detach())
        return z

    loss = ELBOS[elbo]().loss_and_grads(vae.model, guide, x)
    z = torch.cat([s.reshape(-1, 4, 2) for s in seen])
    base = _normal(torch.zeros(2, dtype=F64), 1.0)
    log_prior = _autograd_log_density(vae.prior_flow, base.log_prob, z.reshape(-1, 2)).reshape(
        z.shape[:2]
    )
    with torch.no_grad():
        log_lik = _normal(vae.decoder(z), 0.5).log_prob(x)
        log_q = _normal(*vae.encode(x)).log_prob(z)
    expected = -(20 / 4) * (log_lik + log_prior - log_q).sum(-1).mean()
    assert math.isclose(loss, float(expected), rel_tol=1e-12)
    for name, p in vae.flows.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


@pytest.mark.parametrize("elbo", ["trace_vectorized", "tracegraph", "trace_sequential"])
def test_cvae_with_a_conditional_flow_guide_loss_is_the_bound(elbo: str) -> None:
    """Each data point's ``q(z_i | x_i, y_i)`` is its own context's flow: the loss equals
    the bound computed point by point, with each flow conditioned on that one ``x_i`` and
    its density by autograd."""
    torch.manual_seed(2)
    cvae = _CVAE()
    x, y = torch.randn(3, 3, dtype=F64), torch.randn(3, 2, dtype=F64)
    seen: list = []

    def guide(x, y=None):
        z = cvae.guide(x, y)
        seen.append(z.detach())
        return z

    loss = ELBOS[elbo]().loss(cvae.model, guide, x, y)
    z = torch.cat([s.reshape(-1, 3, 2) for s in seen])
    expected = 0.0
    with torch.no_grad():
        base = cvae.base(x, y)
        loc = cvae.decoder(torch.cat([z, x.expand(len(z), 3, 3)], -1))
    for i in range(3):
        flows = [t.condition(x[i]) for t in cvae.flows]
        base_i = _normal(base.base_dist.loc[i], 0.7)
        log_q = _autograd_log_density(flows, base_i.log_prob, z[:, i])
        log_p = _normal(torch.zeros(2, dtype=F64), 1.0).log_prob(z[:, i])
        log_p = log_p + _normal(loc[:, i], 0.5).log_prob(y[i])
        expected = expected - (log_p - log_q).mean()
    assert math.isclose(loss, float(expected), rel_tol=1e-12)


@pytest.mark.parametrize("parallel", [False, True])
def test_predictive_draws_the_cvae_guide_per_context(parallel: bool) -> None:
    """``Predictive(model, guide=...)``, vectorized or not: ``(S, N, 2)`` latents and
    predictions, and the latents of data point ``i`` come from ``x_i``'s flow. With a base
    of scale 1e-9 every draw is the base mean pushed through the flows, so each is
    compared with the flows conditioned on that one ``x_i``."""
    torch.manual_seed(3)
    cvae = _CVAE()
    cvae.scale = 1e-9
    x = torch.randn(4, 3, dtype=F64)
    out = Predictive(cvae.model, guide=cvae.guide, num_samples=5, parallel=parallel)(x)
    assert out["z"].shape == (5, 4, 2) and out["y"].shape == (5, 4, 2)
    assert out["z"].dtype == F64
    loc = cvae.base(x, x.new_zeros(4, 2)).base_dist.loc.detach()
    for i in range(4):
        z = loc[i]
        for t in cvae.flows:
            z = t.condition(x[i])(z)
        torch.testing.assert_close(out["z"][:, i], z.expand(5, 2), atol=1e-6, rtol=0)
    assert not torch.allclose(out["z"][0, 0], out["z"][0, 1], atol=1e-3)
