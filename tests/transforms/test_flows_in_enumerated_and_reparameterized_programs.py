"""pyro_gen flows in Pyro programs where Pyro's machinery reshapes what reaches them, each
result checked against a reference computed without that machinery:

* an HMM whose emissions are a conditional flow of the enumerated hidden state
  (``pyro.markov`` + ``TraceEnum_ELBO``: contexts of shape ``(S, 1, C)`` and ``(S, 1, 1, C)``
  against observations ``(N, D)``): the loss is the forward algorithm's;
* ``NeuTraReparam`` over an ``AutoNormalizingFlow`` of pyro_gen flows, for a model with a
  global latent and a plate of local ones: the reparameterized model's log density is the
  original's at ``T(u)`` plus ``log|det dT/du|`` by autograd, and its draws are
  ``transform_sample``'s;
* ``TransformReparam`` of a conditional flow prior under vectorized particles: each
  particle's log density is that particle's change of variables, its log-det by autograd.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.transforms import ComposeTransformModule
from pyro.infer import Predictive, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoNormal, AutoNormalizingFlow
from pyro.infer.reparam import NeuTraReparam, TransformReparam

from pyro_gen import transforms as T

from .registry import CASES, Case
from .test_registry import _perturb

F64 = torch.float64
CONDITIONAL = [pytest.param(c, id=c.name) for c in CASES if c.context_dim is not None]
VECTOR_CONDITIONAL = [p for p in CONDITIONAL if len(p.values[0].shape) == 1]


def _conditional_flow(
    case: Case,
) -> tuple[torch.nn.Module, dist.ConditionalTransformedDistribution]:
    torch.manual_seed(0)
    t = case.build().double()
    _perturb(t, 0.3)
    base = dist.Normal(torch.zeros(case.shape, dtype=F64), 1.0).to_event(len(case.shape))
    return t.eval(), dist.ConditionalTransformedDistribution(base, [t])


@pytest.mark.parametrize("case", CONDITIONAL)
def test_an_hmm_with_flow_emissions_has_the_forward_algorithms_loss(case: Case) -> None:
    _, flow = _conditional_flow(case)
    g = torch.Generator().manual_seed(1)
    states, steps, seqs = 3, 3, 2
    contexts = torch.randn(states, case.context_dim, dtype=F64, generator=g)
    init = torch.softmax(torch.randn(states, dtype=F64, generator=g), -1)
    trans = torch.softmax(torch.randn(states, states, dtype=F64, generator=g), -1)
    x = torch.randn(steps, seqs, *case.shape, dtype=F64, generator=g)

    def model(x):
        with pyro.plate("sequences", seqs):
            z = None
            for i in pyro.markov(range(steps)):
                probs = init if z is None else trans[z]
                z = pyro.sample(f"z{i}", dist.Categorical(probs), infer={"enumerate": "parallel"})
                pyro.sample(f"x{i}", flow.condition(contexts[z]), obs=x[i])

    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, lambda x: None, x)
    # forward algorithm over the emission densities, one state and step at a time
    emit = torch.stack(
        [
            torch.stack([flow.condition(contexts[k]).log_prob(x[i]) for k in range(states)], -1)
            for i in range(steps)
        ]
    )  # (steps, seqs, states)
    alpha = init.log() + emit[0]
    for i in range(1, steps):
        alpha = torch.logsumexp(alpha.unsqueeze(-1) + trans.log(), -2) + emit[i]
    expected = -torch.logsumexp(alpha, -1).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-10)


def _global_local(x: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(torch.zeros(2, dtype=F64), 3.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)


NEUTRA_FLOWS = {
    "coupling": lambda d: [
        T.affine_coupling(d, hidden_dims=[8]),
        T.permute(d, "random", seed=0),
        T.spline_coupling(d, hidden_dims=[8], num_bins=4),
    ],
    "autoregressive": lambda d: [
        T.spline_autoregressive(d, [8], num_bins=4),
        T.inverse_autoregressive(d, [8]),
        T.masked_autoregressive(d, [8]),
    ],
    "actnorm_lu_residual": lambda d: [
        T.ActNorm(d),
        T.invertible_conv1x1(d),
        T.residual_block(d, [8], logdet="exact", tol=1e-12),
    ],
}


@pytest.mark.parametrize("name", list(NEUTRA_FLOWS))
def test_neutra_over_a_plated_model_is_the_change_of_variables(name: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 2, dtype=F64)

    def flow(dim: int) -> ComposeTransformModule:
        t = ComposeTransformModule(NEUTRA_FLOWS[name](dim), cache_size=1).double()
        _perturb(t, 0.2)
        return t

    pyro.clear_param_store()
    guide = AutoNormalizingFlow(_global_local, flow)
    guide(x)  # builds the flow over the 2 + 3 * 2 = 8 packed latents
    neutra = NeuTraReparam(guide)
    reparam = neutra.reparam(_global_local)
    shared = "mu_shared_latent"  # NeuTraReparam names it after the model's first latent
    u = torch.randn(8, dtype=F64, generator=torch.Generator().manual_seed(1))

    trace = poutine.trace(poutine.condition(reparam, data={shared: u})).get_trace(x)
    transform = guide.get_transform()
    jac = torch.autograd.functional.jacobian(lambda v: transform(v), u.clone())
    values = {site["name"]: v for site, v in guide._unpack_latent(transform(u.clone()))}
    original = poutine.trace(poutine.condition(_global_local, data=values)).get_trace(x)
    expected = original.log_prob_sum() + torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(trace.log_prob_sum(), expected, rtol=1e-9, atol=1e-8)

    # Predictive over base-space draws gives transform_sample's latents, draw by draw
    draws = torch.randn(3, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    predicted = Predictive(reparam, posterior_samples={shared: draws}, return_sites=["mu", "z"])(x)
    for i, draw in enumerate(draws):
        pushed = neutra.transform_sample(draw)
        torch.testing.assert_close(predicted["mu"][i].reshape(2), pushed["mu"])
        torch.testing.assert_close(predicted["z"][i], pushed["z"])


@pytest.mark.parametrize("case", VECTOR_CONDITIONAL)
def test_transform_reparam_of_a_conditional_prior_per_vectorized_particle(case: Case) -> None:
    t, flow = _conditional_flow(case)
    d, groups, particles = case.shape[0], 3, 4
    g = torch.Generator().manual_seed(1)
    context = torch.randn(groups, case.context_dim, dtype=F64, generator=g)
    y = torch.randn(groups, d, dtype=F64, generator=g)

    def model(y):
        with pyro.plate("groups", groups):
            z = pyro.sample("z", flow.condition(context))
            pyro.sample("y", dist.Normal(z, 0.5).to_event(1), obs=y)

    reparam = poutine.reparam(model, config={"z": TransformReparam()})
    pyro.clear_param_store()
    guide = AutoNormal(reparam, init_scale=0.5)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    guide_trace = poutine.trace(elbo._vectorized_num_particles(guide)).get_trace(y)
    replayed = poutine.replay(elbo._vectorized_num_particles(reparam), trace=guide_trace)
    model_trace = poutine.trace(replayed).get_trace(y)
    model_trace.compute_log_prob()
    u = guide_trace.nodes["z_base"]["value"].detach()
    assert u.shape == (particles, groups, d)
    for k in range(particles):
        z = model_trace.nodes["z"]["value"][k]
        original = poutine.trace(poutine.condition(model, data={"z": z.detach()})).get_trace(y)
        ladj = sum(
            torch.linalg.slogdet(
                torch.autograd.functional.jacobian(t.condition(context[i]), u[k, i].clone())
            )[1]
            for i in range(groups)
        )
        got = sum(model_trace.nodes[s]["log_prob"][k].sum() for s in ("z_base", "y"))
        torch.testing.assert_close(got, original.log_prob_sum() + ladj, rtol=1e-9, atol=1e-7)
