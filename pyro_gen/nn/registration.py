"""Registering a user's network with Pyro's param store, once per tensor.

A user's network may be a :class:`~pyro.nn.PyroModule` (``to_pyro_module_(net)``, or a class
written as in Pyro's modules tutorial). Such a module registers each parameter it reads under
its own name (``"lin.weight"``; a ``PyroParam`` with its constraint), and sends any plain
``nn.Module`` child it reads through ``pyro.module`` itself. A family's own
``pyro.module(name, net)`` registered the same tensors again under the family's name
(``"decoder$$$lin.weight"``), so the param store and every checkpoint held each such tensor
twice, and a ``PyroParam`` a second time unconstrained. :func:`register_module` is
``pyro.module`` for the parameters no ``PyroModule`` owns.
"""

from __future__ import annotations

import warnings

import pyro
from pyro.nn import PyroModule
from pyro.params.param_store import param_with_module_name
from torch import Tensor, nn

__all__ = ["register_module"]

_UNCONSTRAINED = "_unconstrained"


def _split(module: nn.Module) -> tuple[list[tuple[str, Tensor]], list[PyroModule]]:
    """``module.named_parameters()`` (same names and order, a shared tensor once) less those
    under a :class:`~pyro.nn.PyroModule`, and the outermost PyroModules of the tree.

    One walk, as ``named_parameters`` makes; it runs on every model call (after a user swaps
    a submodule the next call sees the new one), so nothing is cached."""
    found: list[tuple[str, Tensor]] = []
    roots: list[PyroModule] = []
    owned: set[int] = set()
    visited: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", module)]
    while stack:  # depth first, children in order: named_modules' order
        prefix, mod = stack.pop()
        if id(mod) in visited:
            continue
        visited.add(id(mod))
        if isinstance(mod, PyroModule):
            roots.append(mod)
            owned.update(id(p) for p in mod.parameters())
            continue
        found.extend((prefix + k, p) for k, p in mod._parameters.items() if p is not None)
        children = [(prefix + k + ".", c) for k, c in mod._modules.items() if c is not None]
        stack.extend(reversed(children))
    seen: set[int] = set()
    plain = []
    for name, p in found:
        if id(p) not in owned and id(p) not in seen:  # a tied weight keeps its first name
            seen.add(id(p))
            plain.append((name, p))
    return plain, roots


def _swap_in(module: nn.Module, name: str, stored: Tensor, update: bool, given: Tensor) -> None:
    """What ``pyro.module(..., update_module_params=True)`` does to one parameter: the
    store's tensor (from ``pyro.get_param_store().load``) replaces the module's own, so the
    module computes with the restored values and training updates the tensor it uses."""
    # only when asked: under poutine.lift or substitute the returned value is a draw or a
    # given tensor, with no store entry behind it
    unconstrained = getattr(stored, "unconstrained", None) if update else None
    stored = unconstrained() if unconstrained is not None else given
    if stored is not given:
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        owner._parameters[leaf] = stored


def _register_pyro_module(mod: PyroModule, update: bool = False) -> None:
    """What ``mod`` registers when it reads its parameters, done now: each trainable
    parameter (a ``PyroParam`` by its own name, with its constraint) and each plain child's
    parameters under the names ``mod`` gives them. Its ``PyroSample`` attributes are not
    read (that would draw them).

    Why not leave it to ``mod``: a PyroModule registers only what it reads inside its own
    call, and a module that returns a distribution (a flow) reads its transforms' weights
    later, in ``log_prob``, where nothing registers them and training left them as they
    were; ``pyro.module`` had registered them, under a second name."""
    local = pyro.settings.get("module_local_params")  # each module its own store: Pyro's way
    prefix = mod.__dict__["_pyro_name"]
    with mod._pyro_context:  # read inside it, an attribute is registered as in mod's call
        for key, value in list(mod._parameters.items()):
            if value is None or not value.requires_grad:
                continue  # a frozen parameter: left to mod, as pyro.module leaves it
            base = key[: -len(_UNCONSTRAINED)] if key.endswith(_UNCONSTRAINED) else key
            if base in mod._pyro_params:
                getattr(mod, base)  # Pyro's own code: its constraint, synced with the store
            elif local:
                getattr(mod, key)
            else:  # what mod's read of an nn.Parameter does, without its attribute lookups
                stored = pyro.param(f"{prefix}.{key}" if prefix else key, value)
                _swap_in(mod, key, stored, update, value)
        for key, child in list(mod._modules.items()):
            if isinstance(child, PyroModule):
                if not child.__dict__["_pyro_name"]:
                    getattr(mod, key)  # names it (converted in place), as its first read does
                _register_pyro_module(child, update)
            elif child is not None:
                _register_plain(mod._pyro_get_fullname(key), child, update)


def _register_plain(name: str, module: nn.Module, update: bool = False) -> None:
    plain, roots = _split(module)
    for param_name, value in plain:
        if value.requires_grad:
            stored = pyro.param(param_with_module_name(name, param_name), value)
            _swap_in(module, param_name, stored, update, value)
        elif module.training:
            # pyro.module's own warning, kept for the parameters it would have seen
            warnings.warn(
                f"{param_name} was not registered in the param store because "
                "requires_grad=False. You can silence this warning by calling "
                "my_module.train(False)",
                stacklevel=4,
            )
    for root in roots:
        _register_pyro_module(root, update)


def register_module(name: str, module: nn.Module, update_module_params: bool = False) -> None:
    """``pyro.module(name, module)``, except that the parameters of a
    :class:`~pyro.nn.PyroModule` inside ``module`` are registered under the names that
    PyroModule gives them (a ``PyroParam`` with its constraint), as it would itself.

    Why: a user's network may be a PyroModule (``to_pyro_module_(net)``, or a class written
    as in Pyro's modules tutorial), which registers each parameter it reads under its own
    name (``"lin.weight"``); ``pyro.module`` registered the same tensors again under the
    family's name (``"decoder$$$lin.weight"``, a ``PyroParam`` a second time unconstrained),
    so the param store and every checkpoint held each of them twice. Everything no
    PyroModule owns is registered as ``pyro.module`` would (with its warning for a parameter
    that does not require grad, in training mode).

    With ``update_module_params=True`` the tensors already in the param store (a store
    loaded with ``pyro.get_param_store().load``) replace the module's own, as
    ``pyro.module(name, module, update_module_params=True)`` does; a ``PyroParam`` takes the
    stored value by itself, as in Pyro. Without it the loaded values were left unused.

    Example:
        >>> from pyro.nn.module import to_pyro_module_
        >>> pyro.clear_param_store()
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> to_pyro_module_(m[1], recurse=False)
        >>> register_module("m", m)
        >>> sorted(pyro.get_param_store().keys())  # m[1]'s under the names it gives them
        ['bias', 'm$$$0.bias', 'm$$$0.weight', 'weight']
    """
    if isinstance(module, PyroModule):
        _register_pyro_module(module, update_module_params)
    else:
        _register_plain(name, module, update_module_params)
