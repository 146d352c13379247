"""pyro_gen's distributions under Pyro's inference: Trace_ELBO (vectorized particles, an outer
``plate(dim=-2)``) and TraceEnum_ELBO losses against the logsumexp written by hand,
Predictive draws (sequential and parallel), an AutoGaussian guide on a flow observed given
a latent, and a class conditioning a flow summed out.

Ported (read, not copied) from pyro-ppl/pyro ``tests/distributions/test_distributions.py``
and run over every distribution pyro_gen hands to ``pyro.sample`` (the cases in
pyro_distribution_cases.py): GaussianMixture (shared and batched parameters), MixturePrior,
VampPrior, Flow / FlowDistribution (plain, conditional, image-shaped, LearnedNormal /
LearnedMixture / ConditionalNormal bases), the VAE's NormalPrior / FlowPrior, the DDPM's
DiscretizedGaussian and the discrete VAE's ExpRelaxedCategorical."""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoGaussian

from pyro_gen import transforms as T
from pyro_gen.distributions import ConditionalNormal, Flow
from pyro_gen.distributions.mixture import GaussianMixture, MixturePrior
from tests.distributions.pyro_distribution_cases import CASES, D, K, _gm_shared, _perturbed


def _mixture_model(p: GaussianMixture) -> Callable:
    def model(x=None, n: int = 6):
        with pyro.plate("data", n if x is None else x.shape[0]):
            return pyro.sample("x", p, obs=x)

    return model


def test_trace_elbo_with_vectorized_particles_is_the_exact_log_likelihood() -> None:
    torch.manual_seed(0)
    p, x = _gm_shared(), torch.randn(6, D)
    model = _mixture_model(p)
    expected = -p.log_prob(x).sum().item()
    for elbo in [
        Trace_ELBO(),
        Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),
    ]:
        assert elbo.loss(model, lambda x=None: None, x) == pytest.approx(expected, rel=1e-5)


def test_mixture_prior_latent_under_an_outer_plate() -> None:
    torch.manual_seed(0)
    prior = _perturbed(MixturePrior(D, K))
    with pyro.plate("outer", 3, dim=-2), pyro.plate("data", 5, dim=-1):
        z = pyro.sample("z", prior())
    assert z.shape == (3, 5, D)
    tr = pyro.poutine.trace(lambda: pyro.sample("z", prior().expand((3, 5)))).get_trace()
    torch.testing.assert_close(tr.log_prob_sum(), prior().log_prob(tr.nodes["z"]["value"]).sum())


def test_trace_enum_elbo_sums_out_a_discrete_choice_of_mixture() -> None:
    # c_n ~ Categorical(w) picks one of two GaussianMixtures (batched parameters indexed by
    # the enumerated value); the loss is -sum_n logsumexp_c(log w_c + log p_c(x_n))
    torch.manual_seed(0)
    w = torch.tensor([0.3, 0.7])
    logits, locs, scales = torch.randn(2, K), torch.randn(2, K, D), torch.rand(2, K, D) + 0.5
    x = torch.randn(6, D)

    @config_enumerate
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(w))
            pyro.sample("x", GaussianMixture(logits[c], locs[c], scales[c]), obs=x)

    per = torch.stack([GaussianMixture(logits[c], locs[c], scales[c]).log_prob(x) for c in (0, 1)])
    expected = -(w.log()[:, None] + per).logsumexp(0).sum().item()
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, lambda x: None, x)
    assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("name", ["GaussianMixture-shared", "Flow", "FlowPrior"])
def test_predictive_draws(name, parallel) -> None:
    torch.manual_seed(0)
    d = CASES[name]()
    model = _mixture_model(d)
    draws = Predictive(model, num_samples=4, parallel=parallel)()["x"]
    assert draws.shape == (4, 6, D)
    assert bool(torch.isfinite(d.log_prob(draws)).all())


def test_auto_gaussian_guide_on_a_flow_observed_given_a_latent() -> None:
    # AutoGaussian calls site["fn"].event_shape.numel() on observed sites with upstream
    # latents: a tuple event shape raised AttributeError. The loss is then Trace_ELBO's
    # single-draw estimate, log q(z) - log p(x, z), recomputed from the traces.
    torch.manual_seed(0)
    flow = _perturbed(Flow(D, [T.conditional_affine_coupling(D, 1, hidden_dims=[8])]))

    def model(x):
        pyro.module("flow", flow)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", flow(z[:, None]), obs=x)

    x = torch.randn(5, D)
    guide = AutoGaussian(model, backend="dense")
    guide(x)  # builds the guide's parameters
    torch.manual_seed(1)
    loss = Trace_ELBO().loss(model, guide, x)
    torch.manual_seed(1)  # the same draw of z
    guide_trace = pyro.poutine.trace(guide).get_trace(x)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model, guide_trace)).get_trace(x)
    expected = guide_trace.log_prob_sum() - model_trace.log_prob_sum()
    assert math.isfinite(loss) and loss == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["transform", "base"])
def test_trace_enum_elbo_sums_out_a_class_conditioning_a_flow(kind) -> None:
    # a class-conditional flow p(x | c), c enumerated: the context arrives with the enum
    # dim, (2, 1, 2), against data (N, D); the loss is -sum_n logsumexp_c(log w_c + log p(x_n | c))
    torch.manual_seed(0)
    if kind == "transform":
        flow = Flow(D, [T.conditional_affine_coupling(D, 2, hidden_dims=[8])])
    else:
        flow = Flow(D, [T.affine_coupling(D, hidden_dims=[8])], base=ConditionalNormal(D, 2, (8,)))
    _perturbed(flow)
    w, x = torch.tensor([0.4, 0.6]), torch.randn(5, D)
    one_hot = torch.eye(2)

    @config_enumerate
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(w))
            pyro.sample("x", flow(one_hot[c]), obs=x)

    with torch.no_grad():
        per = torch.stack([flow.log_prob(x, one_hot[c].expand(5, 2)) for c in (0, 1)])
        expected = -(w.log()[:, None] + per).logsumexp(0).sum().item()
        loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, lambda x: None, x)
    assert loss == pytest.approx(expected, rel=1e-5)
