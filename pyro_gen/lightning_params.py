"""How :class:`~pyro_gen.lightning.LightningSVI` makes the parameters Pyro creates lazily its
own: every param site of the first trace becomes a parameter of the ``LightningModule``, so
that Lightning's optimizer trains it, DDP averages it and checkpoints save it.

A network registered with ``pyro.module`` (or a ``PyroModule``'s own parameter) is already a
parameter of a module the ``LightningModule`` holds. A plain ``pyro.param`` (an autoguide's
locs and scales) is a leaf tensor that only the param store holds: it is adopted into
``pyro_params`` as an ``nn.Parameter``, and the store is made to hold that same
``nn.Parameter``, so the model and the optimizer keep using one tensor.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from torch import nn

from pyro_gen.infer.local_params import local_params

__all__ = ["adopt", "trained_parameters"]


def adopt(
    name: str, value: torch.Tensor, pyro_params: nn.ParameterDict, in_store: dict[str, nn.Parameter]
) -> nn.Parameter:
    """Registers the param-store tensor ``value`` (site ``name``) in ``pyro_params`` (by
    ``name`` with dots as slashes, which a module's keys cannot hold); the store is made to
    hold that same ``nn.Parameter`` and ``in_store`` records it by name.

    Example:
        >>> pyro.clear_param_store()
        >>> leaf = pyro.param("a.b", torch.zeros(2)).unconstrained()
        >>> held, in_store = nn.ParameterDict(), {}
        >>> p = adopt("a.b", leaf, held, in_store)
        >>> list(held), pyro.get_param_store()._params["a.b"] is p is in_store["a.b"]
        (['a/b'], True)
    """
    store = pyro.get_param_store()
    if name in store and not isinstance(value, nn.Parameter):
        constraint = store.get_state()["constraints"][name]
        value = nn.Parameter(value.detach())
        del store[name]
        store.set_state({"params": {name: value}, "constraints": {name: constraint}})
    if name in store:
        in_store[name] = value
    pyro_params[name.replace(".", "/")] = value
    return value


def trained_parameters(
    owner: nn.Module,
    traces: tuple[Any, Any],
    pyro_params: nn.ParameterDict,
    in_store: dict[str, nn.Parameter],
) -> list[nn.Parameter]:
    """The parameters of the param sites of ``traces`` (the guide's, then the model's), in
    the order the traces met them, each once; those ``owner`` does not hold yet are adopted
    (:func:`adopt`).

    Example:
        >>> import pyro.poutine as poutine
        >>> pyro.clear_param_store()
        >>> from torch.distributions import constraints
        >>> def model():
        ...     pyro.param("scale", torch.ones(1), constraint=constraints.positive)
        >>> trace = poutine.trace(model).get_trace()
        >>> owner = nn.Module(); owner.held = nn.ParameterDict()
        >>> [p.shape for p in trained_parameters(owner, (trace, trace), owner.held, {})]
        [torch.Size([1])]
        >>> list(owner.held)
        ['scale']
    """
    names = [
        name for trace in traces for name, site in trace.nodes.items() if site["type"] == "param"
    ]
    store = dict(pyro.get_param_store().named_parameters())  # unconstrained: the leaves
    # params outside the store: a PyroModule's own under Pyro's module_local_params (as in
    # Pyro's Lightning example), registered as their module's parameters already
    local = local_params(*traces)
    owned = {id(p) for p in owner.parameters()}
    trained: dict[int, nn.Parameter] = {}
    for name in dict.fromkeys(names):
        value = store[name] if name in store else local[name]
        if id(value) not in owned:
            value = adopt(name, value, pyro_params, in_store)
            owned.add(id(value))
        trained.setdefault(id(value), value)
    return list(trained.values())
