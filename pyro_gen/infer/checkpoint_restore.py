"""Restoring a loaded checkpoint into modules, the param store, the optimizer and RNG."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyro
import pyro.optim
import pyro.util
import torch

from pyro_gen.data.random_state import set_global_rng_state
from pyro_gen.infer.checkpoint_format import CheckpointError
from pyro_gen.infer.checkpoint_read import PARAM_SHAPED
from pyro_gen.infer.checkpoint_write import _class_name, check_state_arguments, optimizer_kind
from pyro_gen.infer.compiled_resume import restore_compile_record
from pyro_gen.infer.local_params import restore_optim_state
from pyro_gen.infer.optim_args import (
    Change,
    apply_args,
    changed_args,
    check_state_needed,
    describe,
    parse_recorded,
)
from pyro_gen.infer.pyro_modules import MODULE_KEY
from pyro_gen.infer.state_codec import same_constraint
from pyro_gen.nn.legacy_keys import upgrade_state_dict

logger = logging.getLogger("pyro_gen")

_SAME_DTYPE = (
    "build the model in the checkpoint's dtype before resuming (module.double() or "
    "torch.set_default_dtype(torch.float64) for a float64 run, module.float() for a float32 "
    "one), or train into a fresh directory"
)


def restore_modules(ckpt: dict[str, Any], modules: Mapping[str, torch.nn.Module]) -> None:
    """Loads each of ``modules`` strictly from its saved ``state_dict`` and copies the saved
    param-store values into the store (in place where an entry exists). Everything is
    checked first: a refused checkpoint leaves the modules and the store as they were.

    Raises:
        CheckpointError: if a module is missing from the checkpoint, is of another class, or
            its parameters do not fit (other options than the run that wrote it).
    """
    _check_modules(ckpt, modules)
    _check_param_store(ckpt["param_store"])
    _load_modules(ckpt, modules)
    _restore_param_store(ckpt["param_store"])


def _saved_modules(
    ckpt: dict[str, Any], modules: Mapping[str, torch.nn.Module]
) -> Iterator[tuple[str, torch.nn.Module, dict[str, Any]]]:
    saved = ckpt["modules"]
    for name, module in modules.items():
        if name not in saved and name.startswith(MODULE_KEY):
            continue  # written before the modules a plain function closes over were kept
        if name not in saved:
            raise CheckpointError(
                f"the checkpoint has no module {name!r} (it has {sorted(saved)}): it was "
                "written by another kind of run; use a fresh directory"
            )
        yield name, module, saved[name]


def _check_modules(ckpt: dict[str, Any], modules: Mapping[str, torch.nn.Module]) -> None:
    for name, module, entry in _saved_modules(ckpt, modules):
        expected = _class_name(module)
        if entry["class"] != expected:
            raise CheckpointError(
                f"the checkpoint's {name} is a {entry['class']}, not a {expected}: it "
                "belongs to another model; use a fresh directory for this one"
            )
        # Names that a network's earlier versions wrote (the output layer once registered
        # twice) count as the names they load under.
        misfit = _misfit(module.state_dict(), upgrade_state_dict(module, entry["state_dict"]))
        if misfit:
            raise CheckpointError(
                f"the checkpoint's {name} does not fit this {type(module).__name__} "
                f"({misfit}); use the same model options as the run that wrote it"
            )


def _misfit(current: Mapping[str, Any], saved: Mapping[str, Any]) -> str:
    """What a strict ``load_state_dict`` of ``saved`` would fail on, found without loading
    (it copies tensor by tensor, so a failure midway leaves a module half restored)."""
    problems = [
        f"missing {[k for k in current if k not in saved]}",
        f"unexpected {[k for k in saved if k not in current]}",
    ]
    both = [
        (k, v, saved[k])
        for k, v in current.items()
        if k in saved and torch.is_tensor(v) and torch.is_tensor(saved[k])
    ]
    sizes = [
        f"{k}: {tuple(s.shape)} saved, {tuple(v.shape)} here"
        for k, v, s in both
        # a lazy module's parameter takes its shape from what is loaded
        if not isinstance(v, torch.nn.parameter.UninitializedTensorMixin) and v.shape != s.shape
    ]
    problems.append(f"other shapes {sizes}")
    # load_state_dict casts silently: a float64 run resumed into a float32 module would go
    # on in float32 (and a float32 one in float64), not as the run that wrote it
    dtypes = [
        f"{k}: {s.dtype} saved, {v.dtype} here"
        for k, v, s in both
        if v.is_floating_point() and s.is_floating_point() and v.dtype != s.dtype
    ]
    if dtypes:
        problems.append(f"other dtypes {dtypes}: {_SAME_DTYPE}")
    return "; ".join(p for p in problems if not p.endswith("[]"))


def _load_modules(ckpt: dict[str, Any], modules: Mapping[str, torch.nn.Module]) -> None:
    for name, module, entry in _saved_modules(ckpt, modules):
        try:
            module.load_state_dict(entry["state_dict"], strict=True)
        except RuntimeError as e:  # a module's own loading hook refused it
            detail = " ".join(str(e).split())[:300]
            raise CheckpointError(
                f"the checkpoint's {name} does not fit this {type(module).__name__} ({detail}); "
                "use the same model options as the run that wrote it"
            ) from e


def _check_param_store(saved: dict[str, Any]) -> None:
    store = pyro.get_param_store()
    existing = dict(store.named_parameters())
    current = store.get_state()["constraints"]
    for name, value in saved["params"].items():
        if name not in existing:
            continue
        constraint = saved["constraints"][name]
        if existing[name].shape != value.shape:
            raise CheckpointError(
                f"param {name!r} has shape {tuple(existing[name].shape)} here but "
                f"{tuple(value.shape)} in the checkpoint: use the options of the run that wrote it"
            )
        if existing[name].dtype != value.dtype:
            # the store's value is copied in place, which would cast it silently
            raise CheckpointError(
                f"param {name!r} is {existing[name].dtype} here but {value.dtype} in the "
                f"checkpoint: {_SAME_DTYPE}"
            )
        _check_constraint(name, current[name], constraint)
    for name, constraint in saved.get("module_constraints", {}).items():
        if name in current:
            _check_constraint(name, current[name], constraint)


def _check_constraint(name: str, current: Any, saved: Any) -> None:
    if not same_constraint(current, saved):
        raise CheckpointError(
            f"param {name!r} is constrained to {current} here but to {saved} in the "
            "checkpoint: use the model that wrote it"
        )


def _restore_param_store(saved: dict[str, Any]) -> None:
    store = pyro.get_param_store()
    existing = dict(store.named_parameters())
    missing_params, missing_constraints = {}, {}
    for name, value in saved["params"].items():
        if name not in existing:
            missing_params[name] = value.detach().clone().requires_grad_()
            missing_constraints[name] = saved["constraints"][name]
            continue
        with torch.no_grad():
            existing[name].copy_(value)  # in place: optimizers and modules keep their references
    if missing_params:
        store.set_state({"params": missing_params, "constraints": missing_constraints})


def restore_checkpoint(
    ckpt: dict[str, Any],
    *,
    modules: Mapping[str, torch.nn.Module],
    optim: pyro.optim.PyroOptim | None,
    params: Iterable[str] | None = None,
    local_params: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Restores ``modules`` (exactly the set that was saved), the param store, the optimizer
    and the RNG states from a loaded checkpoint; returns the saved progress.

    ``params`` are the param-store names the program registers now (its traced param
    sites). Each must be in the checkpoint, as a saved param or inside a saved module, and,
    where the checkpoint recorded the names its program registered (``save_checkpoint(...,
    params=)``), none of those may be missing now: otherwise the model has changed since the
    run that wrote it, and resuming would train a new ``pyro.param`` from its initial value
    beside restored ones, or continue a model that is not the checkpoint's, silently.

    Optimizer arguments that differ from the recorded ones (``Adam({"lr": ...})``) apply to
    the restored state; a scheduler's are refused when they differ
    (:mod:`pyro_gen.infer.optim_args`). ``local_params`` are the params outside the param
    store by site name (as :func:`save_checkpoint` takes them): each must be a saved
    module's, and gets its optimizer state back.

    Everything is checked before anything is written: a refused checkpoint leaves the
    modules, the param store, the optimizer and the RNG as they were (a fresh start after a
    refusal starts from the user's values, not from half of the checkpoint's).

    Raises:
        CheckpointError: naming every param that is new or gone, a module or param that does
            not fit, or another optimizer, before anything is restored.
    """
    check_state_arguments(modules, optim)
    local = dict(local_params or {})
    if params is not None:
        _check_params(ckpt, modules, list(params), local)
    if set(modules) != set(ckpt["modules"]):
        raise CheckpointError(
            f"the checkpoint holds modules {sorted(ckpt['modules'])} but this run has "
            f"{sorted(modules)}: it was written by another kind of run; use a fresh directory"
        )
    _check_modules(ckpt, modules)
    _check_param_store(ckpt["param_store"])
    changed: list[Change] = []
    if optim is not None:
        _check_moment_shapes(ckpt)
        saved_kind, kind = ckpt.get("optim_kind"), optimizer_kind(optim)
        if saved_kind is not None and saved_kind != kind:
            # Pyro loads the saved state into the new optimizer lazily, at its first step,
            # where another torch optimizer fails on a missing key (SGD: KeyError 'momentum')
            raise CheckpointError(
                f"the checkpoint was trained with the optimizer {saved_kind} but this run "
                f"passes {kind}: resume with the same Pyro optimizer (its state, e.g. Adam's "
                "moments, is part of the checkpoint), or train into a fresh directory"
            )
        changed = changed_args(ckpt.get("optim_args"), optim, local)  # refuses a damaged record
        if changed and isinstance(optim, pyro.optim.PyroLRScheduler):
            raise CheckpointError(
                f"this run's {kind} differs from the checkpoint's: {describe(changed)}. The "
                "scheduler's saved state sets the learning rate, so its arguments cannot "
                "change on resume; pass the recorded ones, or train into a fresh directory"
            )
        check_state_needed(ckpt["optim"], optim, changed, local)
    # Everything is checked: from here on nothing is refused, so nothing is half restored.
    _load_modules(ckpt, modules)
    _restore_param_store(ckpt["param_store"])
    if changed:  # the arguments given apply; the moments and step counts continue
        apply_args(ckpt["optim"], optim, changed, local)
        logger.warning("resuming with the optimizer arguments given: %s", describe(changed))
    if optim is not None:
        _scheduler_state_types(optim, ckpt["optim"])
        _set_optim_state(optim, ckpt["optim"])
        recorded = parse_recorded(ckpt.get("optim_args")) or {"params": {}}
        restore_optim_state(optim, ckpt["optim"], local, compared=recorded["params"])
        # The compiled step made with this optimizer (fit makes it before restoring) takes
        # each step on the path the run that wrote the checkpoint took.
        restore_compile_record(optim, ckpt.get("compiled_step"))
    set_global_rng_state(ckpt["rng"])
    return ckpt["progress"]


def _check_moment_shapes(ckpt: dict[str, Any]) -> None:
    """Each saved moment (Adam's ``exp_avg``, SGD's momentum, ...) has its parameter's
    shape: the saved one for a param-store param, the live one (which the saved module
    state was checked to fit) for a module's. Reading the file compared a module
    parameter's moments only with each other (the file saves the parameter with its module,
    under another name); a moment of another shape failed at the first step with torch's
    error."""
    # unconstrained shapes: what the optimizer steps
    shapes = {n: p.shape for n, p in pyro.get_param_store().named_parameters()}
    shapes.update({n: v.shape for n, v in ckpt["param_store"]["params"].items()})
    for name, entry in ckpt["optim"].items():
        shape = shapes.get(name)
        if shape is None:
            continue
        for state_dict in (entry["optimizer"],) if "scheduler" in entry else (entry,):
            for state in state_dict["state"].values():
                for key in PARAM_SHAPED:
                    value = state.get(key)
                    if torch.is_tensor(value) and value.shape != shape:
                        raise CheckpointError(
                            f"the optimizer's {key!r} of {name!r} has shape "
                            f"{tuple(value.shape)}, its parameter {tuple(shape)}: the "
                            "file was not written by this run; retrain into a fresh directory"
                        )


def _scheduler_state_types(optim: pyro.optim.PyroOptim, states: dict[str, Any]) -> None:
    """Gives saved scheduler state back the container types the scheduler holds. A checkpoint
    stores a ``Counter`` as the plain dict of its counts (it loads with ``weights_only``):
    MultiStepLR's ``milestones`` came back a dict, and its closed form
    (``scheduler.step(epoch)``) then failed with AttributeError on ``.elements()``."""
    ctor = getattr(optim, "pt_scheduler_constructor", None)
    if not (isinstance(ctor, type) and issubclass(ctor, torch.optim.lr_scheduler.MultiStepLR)):
        return
    for state in states.values():
        scheduler = state.get("scheduler") if isinstance(state, dict) else None
        if isinstance(scheduler, dict) and isinstance(scheduler.get("milestones"), dict):
            scheduler["milestones"] = Counter(scheduler["milestones"])


def _set_optim_state(optim: pyro.optim.PyroOptim, states: dict[str, Any]) -> None:
    """``optim.set_state(states)``, also for parameters ``optim`` already holds a torch
    optimizer of: Pyro loads a set state only into the ones it creates later, so an
    optimizer reused after an interrupted run (a notebook cell run again) went on with its
    own moments beside the restored weights."""
    optim.set_state(states)
    waiting = optim._state_waiting_to_be_consumed
    store = pyro.get_param_store()
    for param, optimizer in optim.optim_objs.items():
        state = waiting.pop(store.param_name(param), None)
        if state is None:
            continue
        if "scheduler" in state:  # a PyroLRScheduler's, as Pyro saves it
            optimizer.load_state_dict(state["scheduler"])
            optimizer.optimizer.load_state_dict(state["optimizer"])
        else:
            optimizer.load_state_dict(state)


def _check_params(
    ckpt: dict[str, Any],
    modules: Mapping[str, torch.nn.Module],
    params: list[str],
    local: Mapping[str, torch.Tensor],
) -> None:
    # A module's parameter is in the checkpoint when that module's saved state has it (a
    # closure's module is not in checkpoints written before they were kept: not checked).
    in_modules = {
        id(t): key in ckpt["modules"][name]["state_dict"]
        if name in ckpt["modules"]
        else name.startswith(MODULE_KEY)
        for name, m in modules.items()
        for key, t in m.named_parameters()
    }
    # a param outside the store (module_local_params) is looked up by its own tensor
    store = {**dict(pyro.get_param_store().named_parameters()), **local}
    saved = ckpt["param_store"]["params"]
    new = sorted(
        n for n in set(params) if n not in saved and not in_modules.get(id(store.get(n)), False)
    )
    recorded = ckpt.get("traced_params")
    gone = sorted(set(recorded) - set(params)) if recorded is not None else []
    if new or gone:
        changes = [
            f"{kind} this model: {names}"
            for kind, names in (("new in", new), ("gone from", gone))
            if names
        ]
        raise CheckpointError(
            f"the model or guide has changed since the run that wrote this checkpoint: params "
            f"{'; '.join(changes)}. Resuming would train a new pyro.param (or autoguide site) "
            "from its initial value beside restored ones, or continue another model than the "
            "checkpoint's. Resume with the model and guide that wrote it, or train into a "
            "fresh checkpoint_dir"
        )
