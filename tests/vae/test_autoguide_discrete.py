"""AutoAmortizedNormal next to discrete sites: enumerated ones are left to TraceEnum_ELBO
(exactly the ELBO of the model with the label summed out by hand), others are guided by a
hand-written part, in a Pyro AutoGuideList (global, or plated in the list's plate) or in the
user's own guide function."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, config_enumerate
from pyro.infer.autoguide import AutoGuideList

from pyro_gen.vae import AutoAmortizedNormal

MEANS = torch.tensor([-2.0, 0.0, 3.0])
PROBS = torch.tensor([0.2, 0.5, 0.3])


@config_enumerate
def labelled(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        y = pyro.sample("y", dist.Categorical(PROBS))
        pyro.sample("x", dist.Normal(z + MEANS[y], 1.0), obs=x)


def unenumerated(x):
    """The labelled model with a label left to the guide."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        y = pyro.sample("y", dist.Categorical(PROBS))
        pyro.sample("x", dist.Normal(z + MEANS[y], 1.0), obs=x)


def summed_out(x):
    """The same model with the label marginalized by hand."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        mix = dist.MixtureSameFamily(
            dist.Categorical(PROBS), dist.Normal(z.unsqueeze(-1) + MEANS, 1.0)
        )
        pyro.sample("x", mix, obs=x)


def test_enumerated_site_is_left_to_trace_enum_elbo():
    x = torch.randn(6) * 2
    guide = AutoAmortizedNormal(labelled, hidden_dims=(8,))
    tr = poutine.trace(guide).get_trace(x)
    assert list(guide.local_sites) == ["z"] and "y" not in tr.nodes
    enum = TraceEnum_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(1)
    loss = enum.loss(labelled, guide, x)
    pyro.set_rng_seed(1)
    assert loss == pytest.approx(Trace_ELBO().loss(summed_out, guide, x), rel=1e-5)
    svi = SVI(labelled, guide, pyro.optim.Adam({"lr": 0.05}), enum)
    losses = [svi.step(x) for _ in range(30)]
    assert sum(losses[-5:]) < sum(losses[:5])


def global_label(x):
    k = pyro.sample("k", dist.Categorical(PROBS))  # a discrete global, not enumerated
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z + MEANS[k], 1.0), obs=x)


def test_hand_written_part_in_an_auto_guide_list():
    with pytest.raises(ValueError, match="discrete site 'k'"):
        AutoAmortizedNormal(global_label)(torch.zeros(4))

    def k_guide(x):
        logits = pyro.param("k_logits", torch.zeros(3))
        return {"k": pyro.sample("k", dist.Categorical(logits=logits))}

    guide = AutoGuideList(global_label)
    guide.append(AutoAmortizedNormal(poutine.block(global_label, hide=["k"]), hidden_dims=(8,)))
    guide.append(k_guide)
    x = torch.randn(16) + 3.0
    svi = SVI(global_label, guide, pyro.optim.Adam({"lr": 0.1}), TraceGraph_ELBO())
    pyro.set_rng_seed(0)
    for _ in range(60):
        svi.step(x)
    tr = poutine.trace(guide).get_trace(x)
    assert {"k", "z"} <= set(tr.nodes) and tr.nodes["z"]["value"].shape == (16,)
    assert pyro.param("k_logits").argmax().item() == 2  # the component at 3.0
    names = list(pyro.get_param_store().keys())
    assert any(n.startswith("AutoGuideList.0.net") for n in names), names


def test_hand_written_local_part_next_to_the_autoguide():
    """The user's own guide function: the autoguide for z, a plated encoder for y."""

    classify = torch.nn.Linear(1, 3)
    auto = AutoAmortizedNormal(poutine.block(unenumerated, hide=["y"]), hidden_dims=(8,))

    def guide(x):
        pyro.module("classify", classify)
        auto(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=classify(x.unsqueeze(-1))))

    x = torch.randn(8)
    loss = TraceGraph_ELBO().loss_and_grads(unenumerated, guide, x)
    assert torch.isfinite(torch.tensor(loss))
    assert set(poutine.trace(guide).get_trace(x).nodes) >= {"y", "z"}
    assert classify.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in auto.parameters())


def test_plated_hand_written_part_in_an_auto_guide_list_uses_the_list_plate():
    guide = AutoGuideList(unenumerated)

    def y_part(x):
        with guide.plates["data"]:
            logits = pyro.param("y_logits", torch.zeros(3))
            return {"y": pyro.sample("y", dist.Categorical(logits=logits))}

    guide.append(AutoAmortizedNormal(poutine.block(unenumerated, hide=["y"]), hidden_dims=(8,)))
    guide.append(y_part)
    x = torch.randn(5)
    tr = poutine.trace(guide).get_trace(x)
    assert tr.nodes["y"]["value"].shape == tr.nodes["z"]["value"].shape == (5,)
    assert torch.isfinite(torch.tensor(TraceGraph_ELBO().loss(unenumerated, guide, x)))
