"""A user's network written as a :class:`~pyro.nn.PyroModule` inside the diffusion models.

A ``PyroModule`` registers each parameter it reads under its own name; the models' own
``pyro.module`` registered the same tensors again under theirs (``"ddpm$$$net.lin.weight"``
beside ``"lin.weight"``), so Pyro's param store and every checkpoint of it held each weight
twice. Checked: the PyroModule copy of a user's ``nn.Module`` trains to the same losses and
weights (Pyro's SVI and pyro_gen's fit, same seed), and the param store holds each tensor
once, under the PyroModule's names (a ``PyroParam`` under its constrained name).
"""

from __future__ import annotations

import copy

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.nn import PyroModule, PyroParam
from pyro.nn.module import to_pyro_module_
from torch import nn

from pyro_gen.diffusion import DDPM, VPSDE, FlowMatching, ScoreModel
from pyro_gen.infer import fit
from pyro_gen.transforms.continuous import ContinuousFlow


class Net(nn.Module):
    """A user's denoiser of 2-D points: one linear layer on (x, t)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype).expand(x.shape[:1])[:, None] / 10
        return self.lin(torch.cat([x, t], -1))


class ScaledNet(PyroModule):
    """A PyroModule with a constrained parameter, as Pyro's modules tutorial writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = PyroModule[nn.Linear](3, 2)
        self.scale = PyroParam(
            torch.tensor(0.5), constraint=torch.distributions.constraints.positive
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype)[:, None] / 10
        return self.scale * self.lin(torch.cat([x, t], -1))


def _ddpm(net):
    return DDPM(net, (2,), timesteps=10)


def _score(net):
    return ScoreModel(net, VPSDE(), (2,))


def _flow_matching(net):
    return FlowMatching(ContinuousFlow(net, (2,), rtol=1e-3, atol=1e-3))


MODELS = {"ddpm": _ddpm, "score": _score, "flow_matching": _flow_matching}


def _as_pyro_module(net: nn.Module) -> nn.Module:
    copied = copy.deepcopy(net)
    to_pyro_module_(copied)
    return copied


def _assert_each_tensor_once():
    store = pyro.get_param_store()
    tensors = [store._params[name] for name in store]
    assert len({id(p) for p in tensors}) == len(tensors), sorted(store.keys())


def _svi_run(make, net, x):
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    m = make(net)
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(4)]
    return losses, sorted(pyro.get_param_store().keys())


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_pyro_module_network_trains_as_the_same_nn_module_with_each_weight_stored_once(kind):
    torch.manual_seed(0)
    net = Net()
    pnet = _as_pyro_module(net)
    x = torch.randn(16, 2)
    losses, names = _svi_run(MODELS[kind], net, x)
    assert len(names) == 2  # the nn.Module: registered by the model's pyro.module
    p_losses, p_names = _svi_run(MODELS[kind], pnet, x)
    _assert_each_tensor_once()
    # the PyroModule's own names, and no second copy under the model's
    assert p_names == ["lin.bias", "lin.weight"]
    assert p_losses == losses
    assert torch.equal(pnet.lin.weight, net.lin.weight)
    assert torch.equal(pnet.lin.weight, pyro.param("lin.weight"))


def test_fit_trains_a_pyro_module_ddpm_as_the_nn_module_and_stores_each_weight_once():
    torch.manual_seed(0)
    net = Net()
    pnet = _as_pyro_module(net)
    x = torch.randn(32, 2)
    runs = []
    for n in (net, pnet):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        r = fit(_ddpm(n), x, steps=3, batch_size=16, progress=False,
                optim=pyro.optim.Adam({"lr": 0.05}))  # fmt: skip
        runs.append([h["train_loss"] for h in r.history])
        _assert_each_tensor_once()
    assert runs[0] == runs[1]
    assert torch.equal(pnet.lin.weight, net.lin.weight)


def test_a_pyro_param_of_the_network_is_stored_once_under_its_constrained_name():
    pyro.clear_param_store()
    m = _ddpm(ScaledNet())
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    svi.step(torch.randn(8, 2))
    store = pyro.get_param_store()
    assert sorted(store.keys()) == ["lin.bias", "lin.weight", "scale"]
    _assert_each_tensor_once()
    # trained, and still positive: the store's constraint is the PyroParam's
    scale = float(pyro.param("scale").detach())
    assert scale != 0.5 and scale > 0
    assert torch.equal(pyro.param("scale").detach(), m.net.scale.detach())


def test_a_plain_module_beside_a_pyro_module_submodule_keeps_the_models_names():
    # only the PyroModule's own weights leave pyro.module's naming; a user's plain layers
    # inside the same network stay under the model's name
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = PyroModule[nn.Linear](3, 2)
            self.out = nn.Linear(2, 2)

        def forward(self, x, t):
            return self.out(self.inner(torch.cat([x, t.to(x.dtype)[:, None]], -1)))

    pyro.clear_param_store()
    m = _score(Mixed())
    SVI(m.model, m.guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO()).step(torch.randn(8, 2))
    assert sorted(pyro.get_param_store().keys()) == [
        "bias",
        "score_model$$$net.out.bias",
        "score_model$$$net.out.weight",
        "weight",
    ]
    _assert_each_tensor_once()
