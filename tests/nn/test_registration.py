"""``register_module``: ``pyro.module`` for a user's network, with each tensor stored once
when parts of it are :class:`~pyro.nn.PyroModule` s, compared with Pyro's own registration."""

from __future__ import annotations

import copy
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam, PyroSample
from pyro.nn.module import to_pyro_module_
from torch import nn

from pyro_gen.nn.registration import register_module
from tests.nn.pyro_module_checks import assert_each_tensor_once


def _param_sites(fn) -> dict[str, torch.Tensor]:
    """The param sites one call of ``fn`` records, name: unconstrained tensor."""
    tr = poutine.trace(fn, param_only=True).get_trace()
    return {n: s["value"].unconstrained() for n, s in tr.nodes.items() if s["type"] == "param"}


def test_a_plain_module_is_registered_as_pyro_module_registers_it():
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    net[2].bias.requires_grad_(False)  # left out, with pyro.module's warning
    results = []
    for register in (pyro.module, register_module):
        pyro.clear_param_store()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sites = _param_sites(lambda register=register: register("net", net))
        results.append((sites, [str(w.message) for w in caught]))
    (want, want_warnings), (got, got_warnings) = results
    assert got.keys() == want.keys() == {"net$$$0.weight", "net$$$0.bias", "net$$$2.weight"}
    assert all(got[k] is want[k] for k in want)  # the module's own tensors, as Pyro's
    assert got_warnings == want_warnings and "2.bias" in got_warnings[0]


class Scaled(PyroModule):
    """A user's PyroModule: a linear layer, a positive gain and a weight with a prior."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = PyroModule[nn.Linear](2, 2)
        self.gain = PyroParam(torch.tensor(0.5), constraint=constraints.positive)
        self.shift = PyroSample(dist.Normal(0.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * self.lin(x) + self.shift


def test_a_pyro_modules_parameters_keep_its_names_and_constraint_and_its_priors_are_not_drawn():
    pyro.clear_param_store()
    net = nn.Sequential(Scaled(), nn.Linear(2, 1))
    tr = poutine.trace(lambda: register_module("net", net)).get_trace()
    assert not [n for n, s in tr.nodes.items() if s["type"] == "sample"]  # shift not drawn
    store = pyro.get_param_store()
    assert sorted(store.keys()) == ["gain", "lin.bias", "lin.weight", "net$$$1.bias",
                                    "net$$$1.weight"]  # fmt: skip
    assert store._constraints["gain"] is constraints.positive
    assert store._params["gain"] is net[0].gain_unconstrained
    torch.testing.assert_close(pyro.param("gain").detach(), torch.tensor(0.5))
    # the module's own call registers nothing more
    poutine.trace(net).get_trace(torch.randn(3, 2))
    assert len(store) == 5
    assert_each_tensor_once()


class Lazy(PyroModule):
    """Returns a function that reads its weight later, as a flow's distribution does."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)  # a plain child: its PyroModule parent names it
        self.weight = nn.Parameter(torch.ones(2))

    def forward(self):
        return lambda x: self.lin(x) * self.weight


def test_parameters_a_pyro_module_reads_outside_its_call_are_in_the_trace_once():
    # skipping a PyroModule's parameters left these out of the trace: never trained
    pyro.clear_param_store()
    lazy = Lazy()

    def model():
        register_module("lazy", lazy)
        return lazy()(torch.ones(1, 2))

    sites = _param_sites(model)
    assert sorted(sites) == ["lin$$$bias", "lin$$$weight", "weight"]
    assert sites["weight"] is lazy.weight and sites["lin$$$weight"] is lazy.lin.weight
    assert_each_tensor_once()


def test_a_swapped_submodule_is_registered_at_the_next_call():
    pyro.clear_param_store()
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    register_module("net", net)
    net[1] = PyroModule[nn.Linear](2, 1)  # the user swaps a layer for a PyroModule one
    sites = _param_sites(lambda: register_module("net", net))
    assert sorted(sites) == ["bias", "net$$$0.bias", "net$$$0.weight", "weight"]
    assert sites["weight"] is net[1].weight
    net[0] = nn.Linear(2, 2)  # and a plain one for a new plain one
    sites = _param_sites(lambda: register_module("net2", net))
    assert sites["net2$$$0.weight"] is net[0].weight


def test_a_weight_tied_between_a_pyro_module_and_a_plain_layer_is_stored_once():
    pyro.clear_param_store()
    plain = nn.Linear(2, 2)
    owner = PyroModule[nn.Linear](2, 2)
    owner.weight = plain.weight  # tied
    net = nn.ModuleDict({"a": plain, "b": owner})
    register_module("net", net)
    assert sorted(pyro.get_param_store().keys()) == ["bias", "net$$$a.bias", "weight"]
    assert_each_tensor_once()


def test_the_diffusion_name_still_imports_the_shared_function():
    from pyro_gen.diffusion.network import register_module as diffusion_register

    assert diffusion_register is register_module


@pytest.mark.parametrize("convert", [False, True])
def test_a_model_with_register_module_trains_as_with_pyro_module(convert):
    # the same SVI losses as Pyro's own pyro.module on the same (plain) network
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    x = torch.randn(8, 2)
    runs = []
    for register, converted in ((pyro.module, False), (register_module, convert)):
        module = copy.deepcopy(net)
        if converted:
            to_pyro_module_(module)

        def model(register=register, module=module):
            register("net", module)
            with pyro.plate("data", 8):
                pyro.sample("x", dist.Normal(module(x), 1.0).to_event(1), obs=x)

        pyro.clear_param_store()
        svi = pyro.infer.SVI(model, lambda: None, pyro.optim.Adam({"lr": 0.1}),
                             pyro.infer.Trace_ELBO())  # fmt: skip
        runs.append(([svi.step() for _ in range(3)], [p.detach() for p in module.parameters()]))
        assert_each_tensor_once()
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(a, b)


def test_a_child_converted_in_place_gets_the_name_its_parent_gives_it():
    # to_pyro_module_ on a plain child of a PyroModule leaves it unnamed until the parent
    # reads it; registered before that read, it takes the same name, not "weight"
    pyro.clear_param_store()
    parent = PyroModule[nn.Sequential](nn.Linear(2, 2))
    to_pyro_module_(parent[0])
    register_module("parent", parent)
    assert sorted(pyro.get_param_store().keys()) == ["0.bias", "0.weight"]
    poutine.trace(parent).get_trace(torch.randn(3, 2))
    assert sorted(pyro.get_param_store().keys()) == ["0.bias", "0.weight"]


@pytest.mark.parametrize("convert", [False, True])
def test_a_loaded_param_store_restores_the_module_as_pyro_module_does(convert, tmp_path):
    """``update_module_params=True`` swaps the loaded tensors in (they were left unused, the
    module computing with its fresh weights), a plain part and a PyroModule's own."""

    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        if convert:
            to_pyro_module_(net[2], recurse=False)
        return net

    x = torch.randn(4, 2)
    pyro.clear_param_store()
    trained = build(0)
    register_module("net", trained)
    pyro.get_param_store().save(tmp_path / "params.pt")
    results = {}
    for update in (False, True):
        pyro.clear_param_store()
        pyro.get_param_store().load(tmp_path / "params.pt")
        fresh = build(1)
        register_module("net", fresh, update_module_params=update)
        results[update] = fresh(x)
        if update:  # training now updates the tensors the module computes with
            stored = set(map(id, pyro.get_param_store()._params.values()))
            assert {id(p) for p in fresh.parameters()} == stored
    assert not torch.equal(results[False], trained(x))  # what pyro.module leaves by default
    assert torch.equal(results[True], trained(x))
