"""The arguments a Pyro optimizer was built with, as a checkpoint records and a resume compares
them.

Pyro restores an optimizer's saved state whole, hyperparameters included: resumed with
``Adam({"lr": 1e-4})`` a run trained with ``lr=1e-3`` went on at ``1e-3`` without a word.
A checkpoint therefore records the arguments each parameter's optimizer was given (a dict,
or what a per-parameter function returns for it; not the saved ``param_groups``, which a
scheduler or ``ClippedAdam``'s decay change as training goes), and a resume applies the
ones that differ to the restored state.

Example:
    >>> pyro.clear_param_store()
    >>> loc = pyro.param("loc", torch.zeros(2))
    >>> adam = pyro.optim.Adam({"lr": 0.1, "betas": (0.9, 0.99)})
    >>> adam([loc.unconstrained()])
    >>> recorded = optimizer_args(adam)
    >>> recorded
    '{"params": {"loc": {"betas": [0.9, 0.99], "lr": 0.1}}, "scheduler": null}'
    >>> per_param = pyro.optim.Adam(lambda name: {"lr": 0.01, "betas": (0.9, 0.99)})
    >>> describe(changed_args(recorded, per_param))
    "lr=0.01 (the checkpoint's: 0.1) for 1 param"
"""

from __future__ import annotations

import inspect
import json
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, NamedTuple

import pyro
import pyro.optim
import pyro.optim.clipped_adam
import torch

from pyro_gen.infer.checkpoint_format import CheckpointError


class Change(NamedTuple):
    """One argument of one parameter's optimizer (``param`` None: the scheduler's)."""

    param: str | None
    name: str
    recorded: Any
    given: Any


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return getattr(value, "__name__", repr(value))  # a class or function: by name


def _canonical(args: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(args, sort_keys=True, default=_plain))


def _tensors(local: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The trained tensors by name: the param store's, and params outside it (a
    PyroModule's own under ``module_local_params``) by site name."""
    return {**dict(pyro.get_param_store().named_parameters()), **(local or {})}


def _arguments(
    optim: pyro.optim.PyroOptim, names: list[str], local: Mapping[str, torch.Tensor] | None
) -> dict[str, Any]:
    tensors = _tensors(local)
    params = {
        # Pyro's own lookup of a parameter's arguments (a dict, or the function's result)
        name: _canonical(optim._get_optim_args(tensors[name]))
        for name in names
        if name in tensors
    }
    scheduler = _canonical(optim.kwargs) if isinstance(optim, pyro.optim.PyroLRScheduler) else None
    return {"params": params, "scheduler": scheduler}


def optimizer_args(
    optim: pyro.optim.PyroOptim, local: Mapping[str, torch.Tensor] | None = None
) -> str:
    """The arguments of ``optim`` for each parameter it has an optimizer for (the ``local``
    params outside the store by site name), and its scheduler's, as canonical JSON."""
    store = pyro.get_param_store()
    names = [n for n in map(store.param_name, optim.optim_objs) if n is not None]
    names += [n for n, t in (local or {}).items() if t in optim.optim_objs]
    return json.dumps(_arguments(optim, sorted(names), local), sort_keys=True)


def changed_args(
    recorded: str | None,
    optim: pyro.optim.PyroOptim,
    local: Mapping[str, torch.Tensor] | None = None,
) -> list[Change]:
    """The arguments of ``optim`` that differ from the ``recorded`` ones, for the parameters
    recorded (nothing when none were recorded); ``local``: the params outside the store.

    Raises:
        CheckpointError: if ``recorded`` is not the JSON text :func:`optimizer_args` writes
            (a damaged or crafted checkpoint), in one line.
    """
    old = parse_recorded(recorded)
    if old is None:
        return []
    new = _arguments(optim, list(old["params"]), local)
    changes = []
    for where, before, after in [
        (None, old["scheduler"] or {}, new["scheduler"] or {}),
        *((n, old["params"][n], new["params"][n]) for n in sorted(new["params"])),
    ]:
        for key in sorted({*before, *after}):
            if before.get(key) != after.get(key):
                changes.append(Change(where, key, before.get(key), after.get(key)))
    return changes


def parse_recorded(recorded: str | None) -> dict[str, Any] | None:
    """A checkpoint's record of :func:`optimizer_args`, checked: ``{"params": {name: args},
    "scheduler": args or None}``, each ``args`` a dict; None where nothing comparable was
    recorded (no record, or the flat one of checkpoints before per-parameter records).

    The record is text inside a checkpoint, so a damaged or crafted one (not a string, not
    JSON, nested past the recursion limit, of another shape) is refused here, as damaged,
    rather than failing as a ``TypeError`` or ``AttributeError`` in the comparison.

    Example:
        >>> parse_recorded('{"params": {"loc": {"lr": 0.1}}, "scheduler": null}')
        {'params': {'loc': {'lr': 0.1}}, 'scheduler': None}
        >>> parse_recorded('{"params": ["loc"], "scheduler": null}')
        Traceback (most recent call last):
        ...
        pyro_gen.infer.checkpoint_format.CheckpointError: ... (params is not a dict of dicts); ...
    """
    if recorded is None:
        return None
    if not isinstance(recorded, str):
        raise _damaged(f"a {type(recorded).__name__}, not JSON text")
    try:
        old = json.loads(recorded)
    except RecursionError:
        raise _damaged("nested too deeply") from None
    except ValueError as e:
        raise _damaged(f"not JSON: {e}") from None
    if not isinstance(old, dict) or "params" not in old:
        if isinstance(old, dict):  # a flat record of older checkpoints: not per parameter
            return None
        raise _damaged(f"a JSON {type(old).__name__}, not an object")
    params = old["params"]
    if not isinstance(params, dict) or not all(isinstance(a, dict) for a in params.values()):
        raise _damaged("params is not a dict of dicts")
    if "scheduler" not in old or not isinstance(old["scheduler"], (dict, type(None))):
        raise _damaged("scheduler is missing or not a dict")
    return old


def _damaged(what: str) -> CheckpointError:
    return CheckpointError(
        f"the checkpoint's record of its optimizer arguments is damaged ({what}); restore the "
        "checkpoint from a copy, or train into a fresh directory"
    )


def describe(changes: list[Change]) -> str:
    """The changes in a few words, those shared by several parameters once."""
    params: dict[tuple[str, str, str], list[str | None]] = defaultdict(list)
    for c in changes:
        params[(c.name, _shown(c.given), _shown(c.recorded))].append(c.param)
    parts = []
    for (name, given, recorded), where in params.items():
        count = sum(p is not None for p in where)
        whose = f" for {count} param{'s' * (count != 1)}" if count else " (scheduler)"
        parts.append(f"{name}={given} (the checkpoint's: {recorded}){whose}")
    return ", ".join(parts)


def _shown(value: Any) -> str:
    # an argument not passed is None in the record: "null" read as a value someone gave
    return "not given" if value is None else json.dumps(value)


def apply_args(
    states: dict[str, Any],
    optim: pyro.optim.PyroOptim,
    changes: list[Change],
    local: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Sets the changed arguments in the param groups of the saved ``states``
    (``optim.get_state()`` of a plain Pyro optimizer); an argument no longer given takes
    the torch optimizer's default.

    ClippedAdam decays its rate by ``lrd`` at each step: a new ``lr`` goes on from where
    the decay stood (the rate a run started with it has now), not from its undecayed value.
    """
    ctor = optim.pt_optim_constructor
    defaults = inspect.signature(ctor).parameters
    decays = isinstance(ctor, type) and issubclass(ctor, pyro.optim.clipped_adam.ClippedAdam)
    tensors = _tensors(local)
    for change in changes:
        if change.param is None or change.param not in states or change.param not in tensors:
            continue
        given = optim._get_optim_args(tensors[change.param])
        for group in states[change.param]["param_groups"]:
            if change.name in given:
                value = given[change.name]
            elif change.name in defaults:
                value = defaults[change.name].default
            else:
                continue
            if decays and change.name == "lr":
                recorded = change.recorded
                recorded = defaults["lr"].default if recorded is None else recorded
                value = value * (group["lr"] / recorded)
            group[change.name] = value


def check_state_needed(
    states: dict[str, Any],
    optim: pyro.optim.PyroOptim,
    changes: list[Change],
    local: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Refuses changed arguments under which torch keeps state per parameter that the
    saved ``states`` lack: resumed with ``amsgrad=True`` on an Adam checkpoint written
    without it, the first step failed with KeyError 'max_exp_avg_sq' (RMSprop's
    ``centered``, ``momentum``: 'grad_avg', 'momentum_buffer'). Torch makes such state at a
    parameter's first step only, so the saved run cannot continue under the new argument.
    An optimizer that starts missing state itself (SGD's momentum buffer) is not refused.

    What state the new arguments keep is read from one step of a fresh torch optimizer
    built with them on a zero copy of each parameter whose arguments changed.

    Raises:
        CheckpointError: naming the arguments and the state they need, before anything is
            restored.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> pyro.clear_param_store()
        >>> def model():
        ...     w = pyro.param("w", torch.zeros(2))
        ...     pyro.sample("y", dist.Normal(w, 1.0).to_event(1), obs=torch.ones(2))
        >>> saved = pyro.optim.Adam({"lr": 0.1})
        >>> _ = SVI(model, lambda: None, saved, Trace_ELBO()).step()
        >>> resumed = pyro.optim.Adam({"lr": 0.1, "amsgrad": True})
        >>> changes = changed_args(optimizer_args(saved), resumed)
        >>> check_state_needed(saved.get_state(), resumed, changes)
        Traceback (most recent call last):
        ...
        pyro_gen.infer.checkpoint_format.CheckpointError: this run's optimizer arguments ...
    """
    store = _tensors(local)
    kept: dict[str, set[str]] = {}  # the state keys of a fresh optimizer, by its arguments
    for name in sorted({c.param for c in changes if c.param is not None}):
        saved = states.get(name)
        if name not in store or not isinstance(saved, dict) or "scheduler" in saved:
            continue
        have = next(iter(saved.get("state", {}).values()), None)
        if not have:  # no state saved: torch starts it at the next step, as in a fresh run
            continue
        given = optim._get_optim_args(store[name])
        key = json.dumps(
            [_canonical(given), list(store[name].shape), str(store[name].dtype)], sort_keys=True
        )
        if key not in kept:
            kept[key] = _fresh_state_keys(optim.pt_optim_constructor, given, store[name])
        missing = sorted(kept[key] - set(have))
        if missing:
            ctor = optim.pt_optim_constructor
            raise CheckpointError(
                f"this run's optimizer arguments differ from the checkpoint's: "
                f"{describe([c for c in changes if c.param == name])}, under which "
                f"{ctor.__name__} keeps {', '.join(map(repr, missing))} for each parameter "
                f"from its first step on, and the checkpoint (written without) has none for "
                f"{name!r}: resume with the checkpoint's arguments, or train into a fresh "
                "directory"
            )


def _fresh_state_keys(ctor: Any, args: dict[str, Any], param: torch.Tensor) -> set[str]:
    p = torch.zeros_like(param.detach()).requires_grad_()
    p.grad = torch.zeros_like(p)
    try:
        optimizer = ctor([p], **args)
        optimizer.step()
    except Exception:  # arguments torch refuses here refuse the resumed step the same way
        return set()
    return set(optimizer.state[p])
