"""The torch modules a plain Pyro program runs, found by running it.

A Pyro user's model is often a function over modules it closes over, registered with
``pyro.module("decoder", decoder)`` inside it. The param store then holds their parameters,
but not their buffers (a batch norm's running statistics) and not their mode: a checkpoint
of the param store alone loses the statistics, and an evaluation that cannot switch the
modules to evaluation mode scores with batch statistics and updates the running ones from
held-out data. Running the program once with a global forward hook finds the modules it
calls; the param sites of that run give each its ``pyro.module`` name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from pyro import poutine
from pyro.params.param_store import _MODULE_NAMESPACE_DIVIDER

__all__ = ["MODULE_KEY", "called_modules", "registered_names"]

#: Prefix of the names under which ``fit`` keeps the modules found this way.
MODULE_KEY = "pyro.module:"


@contextlib.contextmanager
def called_modules() -> Iterator[list[torch.nn.Module]]:
    """Collects, in call order, each module whose ``forward`` runs inside the block.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> with called_modules() as found:
        ...     _ = net(torch.ones(1, 2))
        >>> [type(m).__name__ for m in found]
        ['Sequential', 'Linear', 'ReLU']
    """
    found: dict[int, torch.nn.Module] = {}

    def hook(module: torch.nn.Module, args: tuple) -> None:
        found.setdefault(id(module), module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    found_list: list[torch.nn.Module] = []
    try:
        yield found_list
    finally:
        handle.remove()
        found_list.extend(found.values())


def registered_names(
    modules: Iterable[torch.nn.Module],
    traces: Iterable[poutine.Trace],
    known: Iterable[torch.nn.Module] = (),
) -> dict[str, torch.nn.Module]:
    """The outermost of ``modules`` whose parameters the traces registered with
    ``pyro.module``, by their registered path (``"encoder"``, or ``"flow.arn"`` for a network
    called inside a registered transform). Modules inside ``known`` ones (whose state is
    kept already) and modules without registered parameters are left out.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> pyro.clear_param_store()
        >>> encoder = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> def guide(x):
        ...     pyro.module("encoder", encoder)
        ...     pyro.sample("z", dist.Normal(encoder(x), 1.0).to_event(2))
        >>> with called_modules() as found:
        ...     trace = poutine.trace(guide).get_trace(torch.randn(4, 2))
        >>> registered_names(found, [trace])
        {'encoder': Sequential(...)}
    """
    params: dict[int, str] = {}
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] == "param" and _MODULE_NAMESPACE_DIVIDER in name:
                given = site["args"][1] if len(site["args"]) > 1 else None
                if torch.is_tensor(given):
                    params[id(given)] = name.replace(_MODULE_NAMESPACE_DIVIDER, ".")
    inside = {id(sub) for m in known for sub in m.modules()}
    named: dict[str, torch.nn.Module] = {}
    for module in modules:
        if id(module) in inside:
            continue
        for local, p in module.named_parameters():
            full = params.get(id(p))
            if full is not None and full.endswith("." + local):
                named[full[: -len(local) - 1]] = module
                inside.update(id(sub) for sub in module.modules())
                break
    return named
