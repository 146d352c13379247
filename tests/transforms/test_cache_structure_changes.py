"""A flow layer's cache keeps where its parameters live between computations (so that it
does not walk its modules on every call). A change of the module tree after the first call
must still make a cached result stale: a parameter changed in place that the cache did not
know about would otherwise return the value from before the change.

Each test computes once (the cache learns the tree), changes the tree, changes only the new
or moved parameter in place, and checks that the same input is computed afresh.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from pyro_gen import transforms as T


def _zeroed_layer() -> T.InverseAutoregressive:
    torch.manual_seed(0)
    return T.inverse_autoregressive(3, [8], cache_size=1)


def _fresh_value(t: T.InverseAutoregressive, x: torch.Tensor) -> torch.Tensor:
    """What ``t`` computes for ``x``, through an uncached twin that shares its modules: no
    cache hit, and ``t``'s own cache is left as it was."""
    return t.with_cache(0)(x)


def _add_bias_to_output(t: T.InverseAutoregressive) -> nn.Parameter:
    # a parameter registered through nn.Module.__setattr__ (torch's global hook fires)
    extra = nn.Parameter(torch.zeros(6))
    t.made.extra = extra
    original = t.made.forward

    def forward(v: torch.Tensor, **kw: object) -> torch.Tensor:
        return original(v, **kw) + t.made.extra

    t.made.forward = forward
    return extra


def _insert_without_registration_hook(t: T.InverseAutoregressive) -> nn.Parameter:
    # ModuleList.insert writes its _modules dict directly: no registration hook runs
    holder = nn.ModuleList()
    t.made.holder = holder  # registered (hook) while still empty
    t(torch.zeros(2, 3))  # the cache walks the tree with the empty list
    layer = nn.Linear(1, 6, bias=False)
    nn.init.zeros_(layer.weight)
    holder.insert(0, layer)
    original = t.made.forward

    def forward(v: torch.Tensor, **kw: object) -> torch.Tensor:
        return original(v, **kw) + holder[0].weight[:, 0]

    t.made.forward = forward
    return layer.weight


def _write_parameters_dict_directly(t: T.InverseAutoregressive) -> nn.Parameter:
    # a new key in a _parameters dict, written without register_parameter
    extra = nn.Parameter(torch.zeros(6))
    t.made._parameters["extra"] = extra
    original = t.made.forward

    def forward(v: torch.Tensor, **kw: object) -> torch.Tensor:
        return original(v, **kw) + t.made._parameters["extra"]

    t.made.forward = forward
    return extra


@pytest.mark.parametrize(
    "change",
    [_add_bias_to_output, _insert_without_registration_hook, _write_parameters_dict_directly],
    ids=["setattr", "module_list_insert", "parameters_dict_write"],
)
def test_a_parameter_added_after_the_first_call_makes_the_cache_stale(
    change: Callable[[T.InverseAutoregressive], nn.Parameter],
) -> None:
    t = _zeroed_layer()
    x = torch.randn(4, 3)
    t(x)  # the cache walks the tree once
    new = change(t)
    y = t(x)  # recomputed with the new parameter (zero: the same values)
    assert torch.equal(y, _fresh_value(t, x))
    with torch.no_grad():
        new.add_(0.5)  # only the new parameter changes
    again = t(x)
    assert again is not y, "a result from before the change was returned"
    assert torch.equal(again, _fresh_value(t, x))
    assert not torch.equal(again, y)


def test_a_parameter_set_to_none_is_walked_again_not_an_error() -> None:
    t = _zeroed_layer()
    x = torch.randn(4, 3)
    y = t(x)
    t.made.output.bias = None  # register_parameter(name, None): no hook, same dict size
    again = t(x)
    assert again is not y
    assert torch.equal(again, _fresh_value(t, x))


def test_a_submodule_replaced_by_attribute_assignment_is_watched() -> None:
    t = _zeroed_layer()
    x = torch.randn(4, 3)
    t(x)
    old = t.made.output
    new = type(old).__new__(type(old))
    new.__dict__.update(old.__dict__)
    new._parameters = {k: nn.Parameter(v.detach().clone()) for k, v in old._parameters.items()}
    t.made.output = new  # the module registration hook fires
    y = t(x)
    with torch.no_grad():
        new.bias.add_(1.0)  # the replacement's parameter, which the old walk never saw
    again = t(x)
    assert again is not y
    assert torch.equal(again, _fresh_value(t, x))


def test_a_deleted_parameter_is_walked_again_not_a_key_error() -> None:
    t = _zeroed_layer()
    x = torch.randn(4, 3)
    t(x)
    del t.made.output.bias  # the dict shrinks: walked again
    t.made.output.register_parameter("bias", None)
    assert torch.equal(t(x), _fresh_value(t, x))


def test_modules_built_elsewhere_keep_the_cached_result() -> None:
    # torchdiffeq builds modules inside every ODE solve; a user's code may build one between
    # a sample and its log_prob. Neither touches this layer's tree: the cached pair holds.
    t = _zeroed_layer()
    x = torch.randn(4, 3)
    y = t(x)
    nn.Sequential(nn.Linear(3, 3), nn.ReLU())  # registrations on modules no cache walked
    assert t.inv(y) is x
    assert t(x) is y
