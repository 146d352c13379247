"""AutoAmortizedNormal as a part of Pyro's AutoGuideList (globals guided by AutoDelta or
AutoNormal, the locals by the encoder): a later batch of another size than the first (an
epoch's last, a held-out set) failed with "Shape mismatch inside plate('data')", because the
list opened the data plate at its traced size on every call and the model replayed it.
And the list of the two is the single AutoAmortizedNormal split in two: the same loss and
gradients under Trace, TraceMeanField and TraceGraph ELBOs, with a pyro_gen prior."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoNormal

from pyro_gen.infer import evaluate_elbo
from pyro_gen.vae import AutoAmortizedNormal, MixturePrior

D = 4


def model(x: torch.Tensor) -> None:
    w = pyro.sample("w", dist.Normal(torch.zeros(2, D), 1.0).to_event(2))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(z @ w, 1.0).to_event(1), obs=x)


def guide_list(global_part) -> AutoGuideList:
    guide = AutoGuideList(model)
    guide.append(global_part(poutine.block(model, expose=["w"])))
    guide.append(AutoAmortizedNormal(poutine.block(model, hide=["w"]), hidden_dims=(8,)))
    return guide


@pytest.mark.parametrize("global_part", [AutoDelta, AutoNormal])
def test_a_guide_list_takes_batches_of_any_size_after_the_first(global_part):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.randn(7, D)
    guide = guide_list(global_part)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    svi.step(x)
    svi.step(x[:3])  # raised: Shape mismatch inside plate('data') at site x dim -1, 7 vs 3
    # the encoder's posterior of an example does not depend on the batch it comes in
    with torch.no_grad():
        small = poutine.trace(guide).get_trace(x[:3]).nodes["z"]["fn"].base_dist
        full = poutine.trace(guide).get_trace(x).nodes["z"]["fn"].base_dist
    torch.testing.assert_close(small.loc, full.loc[:3])
    torch.testing.assert_close(small.scale, full.scale[:3])
    trace = poutine.trace(poutine.replay(model, trace=poutine.trace(guide).get_trace(x[:3])))
    assert trace.get_trace(x[:3]).nodes["x"]["fn"].batch_shape == (3,)


def test_evaluate_elbo_of_a_guide_list_in_batches_of_another_size():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.randn(7, D)
    guide = guide_list(AutoNormal)
    SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()).step(x)
    per_example = evaluate_elbo(model, x, guide=guide, batch_size=3, per_example=True)
    assert per_example.shape == (7,) and bool(torch.isfinite(per_example).all())


def test_the_lists_data_plate_stays_where_another_part_guides_a_local_latent():
    """An AutoNormal part with a parameter per example needs the list's data plate."""

    def two_locals(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + u, 1.0), obs=x)

    pyro.clear_param_store()
    guide = AutoGuideList(two_locals)
    guide.append(AutoNormal(poutine.block(two_locals, expose=["u"])))
    guide.append(AutoAmortizedNormal(poutine.block(two_locals, hide=["u"]), hidden_dims=(4,)))
    x = torch.randn(5)
    assert torch.isfinite(torch.tensor(Trace_ELBO().loss(two_locals, guide, x)))
    assert "data" in guide._prototype_frames  # AutoNormal's u is indexed under it


PRIOR = MixturePrior(2, 3)


def mixture_model(x: torch.Tensor) -> None:
    """A pyro_gen prior on the local latent, a positive global beside it."""
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    pyro.module("prior", PRIOR)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", PRIOR())
        pyro.sample("x", dist.Normal(z @ torch.ones(2, D), s.unsqueeze(-1)).to_event(1), obs=x)


@pytest.mark.parametrize("Elbo", [Trace_ELBO, TraceMeanField_ELBO, TraceGraph_ELBO])
def test_a_guide_list_is_the_single_guide_split_in_two(Elbo):
    """AutoNormal for the global beside AutoAmortizedNormal for the local, in a list, is
    AutoAmortizedNormal alone (whose globals get an AutoNormal of their own): with the same
    parameter values both give the same loss and gradients on the same draws."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.randn(5, D)
    single = AutoAmortizedNormal(mixture_model, hidden_dims=(8,))
    single(x)
    split = AutoGuideList(mixture_model)
    split.append(AutoNormal(poutine.block(mixture_model, expose=["s"])))
    split.append(AutoAmortizedNormal(poutine.block(mixture_model, hide=["s"]), hidden_dims=(8,)))
    split(x)
    with torch.no_grad():  # move both off their initial values, then copy
        for p in single.parameters():
            p.add_(0.1 * torch.randn_like(p))
    split[0].load_state_dict(single.global_guide.state_dict())
    split[1].net.load_state_dict(single.net.state_dict())

    def loss_and_grads(guide, parts):
        params = [p for part in parts for p in part.parameters()]
        for p in params:
            p.grad = None
        pyro.set_rng_seed(1)
        loss = Elbo().loss_and_grads(mixture_model, guide, x)
        return loss, [p.grad for p in params]

    loss, grads = loss_and_grads(single, [single.global_guide, single.net])
    split_loss, split_grads = loss_and_grads(split, [split[0], split[1].net])
    assert split_loss == pytest.approx(loss, rel=1e-6)
    assert all(g is not None for g in grads) and len(grads) == len(split_grads)
    for a, b in zip(split_grads, grads):
        torch.testing.assert_close(a, b)
