"""The arguments a Pyro optimizer was built with, as a checkpoint records and a resume compares
them.

Pyro restores an optimizer's saved state whole, hyperparameters included: resumed with
``Adam({"lr": 1e-4})`` a run trained with ``lr=1e-3`` went on at ``1e-3`` without a word.
A checkpoint therefore records the arguments given (not the saved ``param_groups``, which a
scheduler or ``ClippedAdam``'s decay change as training goes), and a resume applies the
ones that differ to the restored state.

Example:
    >>> adam = pyro.optim.Adam({"lr": 0.1, "betas": (0.9, 0.99)})
    >>> recorded = optimizer_args(adam)
    >>> recorded
    '{"betas": [0.9, 0.99], "lr": 0.1}'
    >>> changed_args(recorded, pyro.optim.Adam({"lr": 0.01, "betas": (0.9, 0.99)}))
    {'lr': (0.1, 0.01)}
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import pyro.optim
import torch


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return getattr(value, "__name__", repr(value))  # a class or function: by name


def _arguments(optim: pyro.optim.PyroOptim) -> dict[str, Any] | None:
    args = optim.pt_optim_args
    if callable(args):  # per-parameter arguments: a function cannot be compared
        return None
    if isinstance(optim, pyro.optim.PyroLRScheduler):
        return {"optim_args": dict(args), **optim.kwargs}
    return dict(args)


def optimizer_args(optim: pyro.optim.PyroOptim) -> str | None:
    """The arguments ``optim`` was built with, as canonical JSON (None when they are a
    function of the parameter)."""
    args = _arguments(optim)
    return None if args is None else json.dumps(args, sort_keys=True, default=_plain)


def changed_args(recorded: str | None, optim: pyro.optim.PyroOptim) -> dict[str, tuple[Any, Any]]:
    """``{name: (recorded, given)}`` for each argument of ``optim`` that differs from the
    ``recorded`` ones (nothing when either is unknown)."""
    given = optimizer_args(optim)
    if recorded is None or given is None or given == recorded:
        return {}
    old, new = json.loads(recorded), json.loads(given)
    return {k: (old.get(k), new.get(k)) for k in sorted({*old, *new}) if old.get(k) != new.get(k)}


def apply_args(states: dict[str, Any], optim: pyro.optim.PyroOptim, names: list[str]) -> None:
    """Sets the arguments ``names`` of ``optim`` (a plain Pyro optimizer) in every param
    group of its saved ``states`` (``optim.get_state()``); an argument no longer given
    takes the torch optimizer's default."""
    given = optim.pt_optim_args
    defaults = inspect.signature(optim.pt_optim_constructor).parameters
    for state in states.values():
        for group in state["param_groups"]:
            for name in names:
                if name in given:
                    group[name] = given[name]
                elif name in defaults and defaults[name].default is not inspect.Parameter.empty:
                    group[name] = defaults[name].default
