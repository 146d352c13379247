"""pyro_gen's conditional layers built on Pyro's own conditioners (``ConditionalDenseNN``,
``ConditionalAutoRegressiveNN``, which the layers take as they are) inside Pyro programs whose
machinery gives the context batch dims the value lacks: an enumerated class label against
observed data (``TraceEnum_ELBO``), a latent drawn per vectorized particle
(``Trace_ELBO(vectorize_particles=True)``).

Why: Pyro's networks expand the context to the input's batch shape and cannot grow the input
to the context's, so these programs failed inside the network with "expand(...): the number of
sizes provided ... must be greater or equal to the number of dimensions in the tensor". Each
result is checked against the same density computed one example (and one label or particle)
at a time, and the mixture's loss against its closed form, a log-sum-exp over the labels.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.nn import ConditionalAutoRegressiveNN, ConditionalDenseNN

from pyro_gen import transforms as T

F64 = torch.float64
D, C = 4, 3  # event size, context size

LAYERS = {
    "coupling": lambda: T.ConditionalCoupling(
        T.alternating_mask(D),
        ConditionalDenseNN(D // 2, C, [8], param_dims=[D // 2, D // 2]),  # shift, log-scale
        T.Affine(),
    ),
    "maf": lambda: T.ConditionalMaskedAutoregressive(
        D, ConditionalAutoRegressiveNN(D, C, [8]), T.Affine()
    ),
    "iaf": lambda: T.ConditionalInverseAutoregressive(
        D, ConditionalAutoRegressiveNN(D, C, [8]), T.Affine()
    ),
}


def _flow(name: str) -> dist.ConditionalTransformedDistribution:
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    with torch.no_grad():  # off the near-identity start, so that the context matters
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    base = dist.Normal(torch.zeros(D, dtype=F64), 1.0).to_event(1)
    return dist.ConditionalTransformedDistribution(base, [layer])


def _one_at_a_time(flow, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x | context)`` for each pair of the broadcast batch, one pair per call."""
    batch = torch.broadcast_shapes(context.shape[:-1], x.shape[:-1])
    cs = context.expand(batch + (C,)).reshape(-1, C)
    xs = x.expand(batch + (D,)).reshape(-1, D)
    return torch.stack([flow.condition(c).log_prob(v) for c, v in zip(cs, xs)]).reshape(batch)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize(
    ("context_batch", "value_batch"),
    [((5, 3), (3,)), ((5, 1), (3,)), ((3,), ()), ((3,), (5, 3))],
    ids=["particles", "enumerated", "one-value", "value-wider"],
)
def test_a_context_batch_wider_than_the_value_broadcasts(name, context_batch, value_batch):
    flow = _flow(name)
    g = torch.Generator().manual_seed(1)
    context = torch.randn(*context_batch, C, dtype=F64, generator=g)
    x = torch.randn(*value_batch, D, dtype=F64, generator=g)
    d = flow.condition(context)
    torch.testing.assert_close(d.log_prob(x), _one_at_a_time(flow, context, x))
    # the draw for a context batch, from a base without one, is one draw per context
    assert d.rsample().shape == (*context_batch, D)


@pytest.mark.parametrize("name", list(LAYERS))
def test_enumerated_labels_give_the_mixtures_closed_form_loss(name):
    """A class-conditional flow mixture with the label enumerated: the loss is minus
    ``sum_i log sum_k pi_k p(x_i | k)``."""
    flow = _flow(name)
    pi = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    x = torch.randn(6, D, dtype=F64, generator=torch.Generator().manual_seed(2))

    @config_enumerate
    def model(x):
        with pyro.plate("data", x.shape[0]):
            k = pyro.sample("k", dist.Categorical(pi))  # (C, 1) when enumerated
            pyro.sample("x", flow.condition(F.one_hot(k, C).to(F64)), obs=x)

    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, lambda x: None, x)
    per_label = torch.stack(
        [flow.condition(F.one_hot(torch.tensor(k), C).to(F64)).log_prob(x) for k in range(C)], -1
    )
    expected = -torch.logsumexp(per_label + pi.log(), -1).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("name", list(LAYERS))
def test_a_latent_context_per_vectorized_particle_scores_each_particle(name):
    """``x | z`` is the flow with the latent ``z`` as its context: under vectorized particles
    ``z`` is ``(K, B, C)`` against data ``(B, D)``; each particle's likelihood is the one
    computed for that particle's ``z`` alone."""
    flow = _flow(name)
    x = torch.randn(4, D, dtype=F64, generator=torch.Generator().manual_seed(3))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(C, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", flow.condition(z), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.full((C,), 0.3, dtype=F64), 0.5).to_event(1))

    elbo = Trace_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    guide_trace = poutine.trace(elbo._vectorized_num_particles(guide)).get_trace(x)
    vectorized = elbo._vectorized_num_particles(model)
    model_trace = poutine.trace(poutine.replay(vectorized, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    z = guide_trace.nodes["z"]["value"]
    assert z.shape == (5, 4, C)
    expected = torch.stack([flow.condition(zk).log_prob(x) for zk in z])
    torch.testing.assert_close(model_trace.nodes["x"]["log_prob"], expected)
    # and the loss itself runs through Pyro's vectorized path
    assert torch.isfinite(torch.tensor(elbo.loss(model, guide, x)))
