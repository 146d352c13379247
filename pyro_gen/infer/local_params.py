"""Params that live in their modules, outside the global param store.

Under Pyro's ``pyro.settings.set(module_local_params=True)`` a ``PyroModule``'s params are
its own tensors: a trace's param site still names each one, and its value points to the
unconstrained tensor (``site["value"].unconstrained()``, what Pyro's ``SVI`` steps), but the
param store knows none of them. Pyro's optimizers key their saved state by the store's name
of each tensor, which all such params lack (``PyroOptim.get_state`` files them all under
``None``); here they are keyed by their site names instead, so that a checkpoint keeps each
one's optimizer state and a resume gives it back.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.optim.optim import _get_state_dict, _load_state_dict

logger = logging.getLogger("pyro_gen")


class LocalParamError(ValueError):
    """A param site outside the param store whose tensor cannot be found."""


def local_params(*traces: Any) -> dict[str, torch.Tensor]:
    """The unconstrained tensors of the traces' param sites that the param store lacks, by
    site name.

    Raises:
        LocalParamError: a site's value has no unconstrained tensor (a plain
            ``nn.Parameter`` under ``module_local_params``, which Pyro's ``SVI`` cannot
            step either).
    """
    store = pyro.get_param_store()
    found: dict[str, torch.Tensor] = {}
    for tr in traces:
        for name, site in tr.nodes.items():
            if site["type"] != "param" or name in store._params or name in found:
                continue
            ref = getattr(site["value"], "unconstrained", None)
            tensor = ref() if ref is not None else None
            if tensor is None:
                raise LocalParamError(
                    f"param site {name!r} is not in the param store and has no unconstrained "
                    "tensor (a plain nn.Parameter under module_local_params): declare it a "
                    "PyroParam, as Pyro's SVI needs too"
                )
            found[name] = tensor
    return found


def optim_state(
    optim: pyro.optim.PyroOptim, local: Mapping[str, torch.Tensor]
) -> dict[str | None, Any]:
    """``optim.get_state()``, with the state of each of the ``local`` params under its site
    name instead of Pyro's shared ``None`` key."""
    states = optim.get_state()
    if local:
        states.pop(None, None)
        for name, tensor in local.items():
            held = optim.optim_objs.get(tensor)
            if held is not None:
                states[name] = _get_state_dict(held)
    return states


def restore_optim_state(
    optim: pyro.optim.PyroOptim,
    states: Mapping[str, Any],
    local: Mapping[str, torch.Tensor],
    compared: Collection[str] = (),
) -> None:
    """Gives each of the ``local`` params its saved optimizer state, creating its optimizer
    as ``optim`` would on its first step (Pyro looks waiting state up by the store's names,
    so it would start these afresh). The learning rate and the other arguments of a plain
    optimizer are the ones ``optim`` is given now, as for the store's params (a change is
    logged).

    ``compared``: the params whose arguments the checkpoint recorded, which the caller has
    compared with those given and applied to ``states``
    (:func:`~pyro_gen.infer.optim_args.apply_args`). Only for the others (checkpoints
    written before local params' arguments were recorded) are the saved param groups
    compared with the arguments given, which takes a rate decayed since (ClippedAdam's
    ``lrd``, a rate lowered by hand) for a changed argument."""
    changed: set[str] = set()
    for name, tensor in local.items():
        state = states.get(name)
        optim._state_waiting_to_be_consumed.pop(name, None)
        if state is None:
            continue
        if tensor not in optim.optim_objs:
            optim.optim_objs[tensor] = optim._get_optim(tensor)
            optim.grad_clip[tensor] = optim._get_grad_clip(tensor)
        held = optim.optim_objs[tensor]
        _load_state_dict(held, state)
        # (a scheduler's arguments cannot change)
        if isinstance(held, torch.optim.Optimizer) and name not in compared:
            given = optim._get_optim_args(tensor)
            for group in held.param_groups:
                for key, value in given.items():
                    if key in group and group[key] != value:
                        changed.add(f"{key} {group[key]!r} -> {value!r}")
                        group[key] = value
    if changed:  # as the store's params say it (checkpoint.restore_checkpoint)
        logger.warning(
            "resuming with the optimizer arguments given (module-local params): %s",
            ", ".join(sorted(changed)),
        )
