"""``fit`` takes Pyro's ``Trace_ELBO(...)(model, guide)`` idiom (an ``ELBOModule``, as in
Pyro's ``examples/svi_lightning.py``) with the bound ELBO's own settings: it trained with the
default ``Trace_ELBO()`` (``num_particles`` dropped silently), and one passed as ``loss=``
failed inside the model."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample

from pyro_gen.infer import fit


class Regression(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](2, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 2]).to_event(2))

    def forward(self, x, y=None):
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(mean, 0.5), obs=y)


def _trained(particles: int, bound: bool) -> dict[str, torch.Tensor]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = Regression()
    guide = AutoNormal(model)
    x = torch.randn(32, 2)
    y = x @ torch.tensor([1.0, -2.0]) + 0.5 * torch.randn(32)
    elbo = Trace_ELBO(num_particles=particles)
    opt = {"optim": pyro.optim.Adam({"lr": 0.05}), "compile": False, "progress": False}
    if bound:
        fit(elbo(model, guide), {"x": x, "y": y}, steps=5, batch_size=32, **opt)
    else:
        fit(model, {"x": x, "y": y}, guide=guide, loss=elbo, steps=5, batch_size=32, **opt)
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_the_bound_elbo_trains_with_its_own_settings():
    bound = _trained(4, bound=True)
    unbound = _trained(4, bound=False)
    one_particle = _trained(1, bound=False)
    assert bound.keys() == unbound.keys()
    for k in bound:
        assert torch.equal(bound[k], unbound[k]), k
    # the particles count: four particles end elsewhere than the default one
    assert any(not torch.equal(bound[k], one_particle[k]) for k in bound)


def test_an_elbo_module_beside_a_guide_or_as_the_loss_is_refused():
    model = Regression()
    guide = AutoNormal(model)
    x, y = torch.randn(8, 2), torch.randn(8)
    with pytest.raises(TypeError, match="ELBOModule.*not a loss"):
        fit(model, {"x": x, "y": y}, guide=guide, loss=Trace_ELBO()(model, guide), steps=1)
    with pytest.raises(TypeError, match="brings its own guide and loss"):
        fit(Trace_ELBO()(model, guide), {"x": x, "y": y}, guide=guide, steps=1)
