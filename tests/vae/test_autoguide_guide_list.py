"""AutoAmortizedNormal as a part of Pyro's AutoGuideList (globals guided by AutoDelta or
AutoNormal, the locals by the encoder): a later batch of another size than the first (an
epoch's last, a held-out set) failed with "Shape mismatch inside plate('data')", because the
list opened the data plate at its traced size on every call and the model replayed it."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoNormal

from pyro_gen.infer import evaluate_elbo
from pyro_gen.vae import AutoAmortizedNormal

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
