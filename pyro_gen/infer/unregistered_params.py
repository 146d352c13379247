"""Network weights that a model or guide computes with but never registers with Pyro.

SVI trains the param store's tensors: those of ``pyro.param`` sites, which ``pyro.module``
and ``PyroModule`` make for a network's weights. A network called in a model or guide
without ``pyro.module("name", net)`` still shapes the ELBO, and backpropagation still writes
its ``.grad``, but no optimizer ever steps it: the loss falls through the other parameters
while, say, the decoder stays at its random initialisation. Pyro says nothing. ``fit``
looks once, before training, through the autograd graph of one batch's log-densities for
``nn.Parameter`` s that are not trained, and warns, naming the modules.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule

from pyro_gen.data.batching import Call
from pyro_gen.infer.program import Program, quiet_run, traces_of
from pyro_gen.infer.pyro_modules import called_modules

__all__ = ["UnregisteredParameterWarning", "warn_unregistered"]


class UnregisteredParameterWarning(UserWarning):
    """A model or guide computes with ``nn.Parameter`` s that no Pyro optimizer steps."""


def _leaves(roots: Iterable[torch.Tensor], data: list[torch.Tensor]) -> list[torch.Tensor]:
    """The ``nn.Parameter`` s that ``roots`` were computed from, not counting ``data`` and
    what it was computed from (a batch sliced from a tensor that requires a gradient)."""
    seen = {id(t.grad_fn) for t in data if t.grad_fn is not None}
    data_ids = {id(t) for t in data}
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    found: dict[int, torch.Tensor] = {}
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)  # an AccumulateGrad node
        # nn.Parameters only: a leaf made during the run (a CNF's ``x.detach()
        # .requires_grad_()`` for its divergence) is no weight to train
        if isinstance(variable, torch.nn.Parameter) and id(variable) not in data_ids:
            found.setdefault(id(variable), variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return list(found.values())


def _log_densities(trace: poutine.Trace) -> list[torch.Tensor]:
    out = []
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        try:
            out.append(site["fn"].log_prob(site["value"]))
        except (ValueError, RuntimeError, TypeError, NotImplementedError):
            continue  # a site that cannot score its value (an improper prior) adds no leaf
    return out


def _trained(traces: Iterable[poutine.Trace]) -> set[int]:
    """The ids of the tensors SVI steps: each param site's unconstrained tensor."""
    store = pyro.get_param_store()
    ids = set()
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] != "param":
                continue
            if name in store._params:
                ids.add(id(store._params[name]))
            ref = getattr(site["value"], "unconstrained", None)
            if ref is not None and ref() is not None:
                ids.add(id(ref()))
    return ids


def _pyro_params(modules: Iterable[torch.nn.Module]) -> dict[int, str]:
    """``PyroParam`` s of the PyroModules in ``modules`` (and below), by the id of their
    unconstrained tensor: ``"the PyroParam 'noise' of a VAE"``. A PyroModule registers them
    only inside its context (``forward`` or a ``@pyro_method``), so one read in a plain
    ``model`` method is a parameter no optimizer steps."""
    found: dict[int, str] = {}
    for outer in modules:
        for module in outer.modules():
            if not isinstance(module, PyroModule):
                continue
            for name in module.__dict__.get("_pyro_params", {}):
                tensor = module._parameters.get(name + "_unconstrained")
                if tensor is not None:
                    found.setdefault(
                        id(tensor), f"the PyroParam {name!r} of a {type(module).__name__}"
                    )
    return found


def _owners(
    leaves: list[torch.Tensor],
    modules: list[torch.nn.Module],
    pyro_params: dict[int, str],
) -> list[str]:
    """The PyroParams among ``leaves``, the outermost called modules holding the others,
    then the leaves no called module holds (a parameter used outside its module's
    ``forward``)."""
    names = [pyro_params[id(t)] for t in leaves if id(t) in pyro_params]
    left = {id(t): t for t in leaves if id(t) not in pyro_params}
    for module in modules:  # in call order: an outer module runs before its children
        held = [p for p in module.parameters() if id(p) in left]
        if held:
            shapes = ", ".join(str(tuple(p.shape)) for p in held[:4])
            more = ", ..." if len(held) > 4 else ""
            names.append(f"a {type(module).__name__} (parameters of shapes {shapes}{more})")
            for p in held:
                del left[id(p)]
    names += [f"a parameter of shape {tuple(t.shape)}" for t in left.values()]
    return names


def warn_unregistered(prog: Program, call: Call) -> None:
    """Warns where the pair's log-densities on ``call`` depend on ``nn.Parameter`` s that
    require a gradient but that no param site holds (so no Pyro optimizer steps them). One
    run of guide and model with gradients on; it leaves no trace
    (:func:`~pyro_gen.infer.program.quiet_run`).

    Example:
        >>> import warnings, pyro.distributions as dist
        >>> from pyro_gen.infer.program import program
        >>> net = torch.nn.Linear(1, 1)
        >>> def model(x):  # no pyro.module("net", net)
        ...     pyro.sample("x", dist.Normal(net(x), 1.0).to_event(2), obs=x)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_unregistered(program(model, lambda x: None), Call((torch.zeros(3, 1),)))
        >>> str(caught[0].message)[:73]
        'the model or guide computes with a Linear (parameters of shapes (1, 1), ('
    """
    with quiet_run(prog), torch.enable_grad(), called_modules() as called:
        traces = traces_of(prog, call)
        roots = [t for trace in traces for t in _log_densities(trace)]
        leaves = _leaves(roots, call.tensors())
    trained = _trained(traces)
    untrained = [t for t in leaves if id(t) not in trained]
    if not untrained:
        return
    pyro_params = _pyro_params([*called, *_program_modules(prog)])
    owners = _owners(untrained, called, pyro_params)
    remedies = []
    if any(id(t) in pyro_params for t in untrained):
        # the module is a PyroModule already: what is missing is its context
        remedies.append(
            "a PyroModule registers its PyroParams only inside forward or a method decorated "
            "with @pyro.nn.pyro_method: decorate the model and guide methods that read them"
        )
    if any(id(t) not in pyro_params for t in untrained):
        remedies.append(
            'call pyro.module("name", module) in the model or guide that uses it (or make '
            "it a pyro.nn.PyroModule)"
        )
    remedy = "; ".join(remedies)
    warnings.warn(
        f"the model or guide computes with {', '.join(owners)} whose parameters require a "
        f"gradient but are not registered with Pyro, so training leaves them as they are: "
        f"{remedy}; if they are meant to stay fixed, call requires_grad_(False) on them",
        UnregisteredParameterWarning,
        stacklevel=3,
    )


def _program_modules(prog: Program) -> list[torch.nn.Module]:
    """The pair's modules, and those whose methods the model and guide are (a PyroModule's
    ``model`` method passed as the model)."""
    found = list(prog.modules.values())
    for fn in (prog.model, prog.guide):
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module):
            found.append(owner)
    return found
