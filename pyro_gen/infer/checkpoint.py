"""Checkpoints of a training run that load without running code and refuse damage.

A checkpoint holds every module's ``state_dict``, the Pyro param store (unconstrained values
by name, constraints by their public name), the optimizer state, the RNG states and the
run's progress. The file is::

    PYRO_GEN CHECKPOINT\\n
    {"format": 2, "size": N, "sha256": "..."}\\n
    N bytes written by torch.save

Reading checks the first line, the size (a truncated copy is refused) and the SHA-256 (a
flipped byte is refused) before anything is parsed, and then parses the payload with
``torch.load(weights_only=True)`` and no extra allowlist: the payload holds only tensors,
numbers, strings, lists, tuples and dicts (:mod:`pyro_gen.infer.state_codec` turns numpy
RNG states and constraints into those), so a crafted file cannot run code even with a
matching checksum, and a plain ``torch.save`` or pickle file is refused before it is
unpickled at all.

Why torch's restricted unpickler rather than safetensors + JSON: safetensors is not a
dependency of pyro_gen, holds flat tensors only (the optimizer's nested state, tuples and
integer keys would need a second JSON encoding of our own), and the two files of such a
checkpoint could not be replaced in one atomic step. It is faster: on an MNIST-VAE-sized
checkpoint (8.3 MB with Adam state) a load took 65 ms this way, 13 ms with safetensors +
JSON and 34 ms with the same SHA-256 added (busy 2-core Xeon, ``benchmarks/checkpoint_load.py``,
RESULTS.md "Checkpoint format"). A few tens of milliseconds once per resume, evaluate or
sample, next to seconds of start-up and of every epoch, do not buy a second dependency.

:func:`run_lock` gives a training run exclusive use of its directory.

Example:
    >>> import tempfile, pyro.optim
    >>> net = torch.nn.Linear(2, 1)
    >>> path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
    >>> save_checkpoint(path, modules={"model": net}, optim=pyro.optim.Adam({}),
    ...                 progress={"epoch": 1})
    >>> restore_checkpoint(load_checkpoint(path), modules={"model": net},
    ...                    optim=pyro.optim.Adam({}))
    {'epoch': 1}
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import pyro.util
import torch

from pyro_gen.data.random_state import global_rng_state, set_global_rng_state
from pyro_gen.infer.files import (
    O_NOFOLLOW,
    append_line,
    atomic_write_bytes,
    remove_stale_temporaries,
    try_lock,
    unlock,
)
from pyro_gen.infer.local_params import optim_state, restore_optim_state
from pyro_gen.infer.optim_args import Change, apply_args, changed_args, describe, optimizer_args
from pyro_gen.infer.pyro_modules import MODULE_KEY
from pyro_gen.infer.state_codec import (
    UnsafeStateError,
    decode,
    encode,
    encode_constraint,
    same_constraint,
)
from pyro_gen.nn.legacy_keys import upgrade_state_dict

logger = logging.getLogger("pyro_gen")

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
LOCK_NAME = ".pyro-gen.lock"
FORMAT_VERSION = 2
MAGIC = b"PYRO_GEN CHECKPOINT\n"
_HEADER_LIMIT = 4096


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, of an old format, or belongs to another model."""


class RunLockedError(CheckpointError):
    """Another process is training into the same run directory."""


# ---------------------------------------------------------------------------------------
# Writing.


def save_checkpoint(
    path: str | Path,
    *,
    modules: Mapping[str, torch.nn.Module],
    optim: pyro.optim.PyroOptim,
    progress: dict[str, Any] | None = None,
    params: Iterable[str] | None = None,
    local_params: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Atomically writes a checkpoint of ``modules``, the param store, ``optim``, the RNG
    states and ``progress`` (a dict of JSON-like values, tensors and RNG states).

    ``params``: the param-store names the program registers (its traced param sites), kept
    so that :func:`restore_checkpoint` can tell a model that lost a ``pyro.param`` since.
    ``local_params``: the params outside the param store (a PyroModule's own under Pyro's
    ``module_local_params``) by site name, whose optimizer state is kept under that name
    (:mod:`pyro_gen.infer.local_params`).

    Raises:
        CheckpointError: if some state cannot be stored without pickling code (it names it).
    """
    try:
        payload = {
            "format": FORMAT_VERSION,
            "modules": {name: _module_entry(name, m) for name, m in modules.items()},
            "param_store": _param_store_entry(modules),
            "optim": encode(optim_state(optim, local_params or {}), "optimizer state"),
            "optim_kind": optimizer_kind(optim),
            "optim_args": optimizer_args(optim),
            "rng": encode(global_rng_state(), "RNG state"),
            "progress": encode(dict(progress or {}), "progress"),
        }
        if params is not None:
            payload["traced_params"] = sorted(set(params))
    except UnsafeStateError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e}") from e
    write_payload(path, payload)


def write_payload(path: str | Path, payload: dict[str, Any]) -> None:
    """Writes an encoded checkpoint payload behind its header, atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    header = {
        "format": FORMAT_VERSION,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_bytes(path, MAGIC + json.dumps(header).encode() + b"\n" + data)


def _module_entry(name: str, module: torch.nn.Module) -> dict[str, Any]:
    state = module.state_dict()
    encoded = encode(state, f"{name}.state_dict()")
    # load_state_dict reads per-module versions from here (BatchNorm, for one).
    encoded._metadata = getattr(state, "_metadata", {})
    return {"class": _class_name(module), "state_dict": encoded}


def _param_store_entry(modules: Mapping[str, torch.nn.Module]) -> dict[str, Any]:
    # A pyro.module parameter is the module's own tensor: its state_dict already holds it.
    # Anything else in the store (pyro.param sites, networks registered by a loss that is not
    # among ``modules``) is saved here.
    owned = {id(t) for m in modules.values() for t in itertools.chain(m.parameters(), m.buffers())}
    store = pyro.get_param_store()
    constraints = store.get_state()["constraints"]
    params, recorded, of_modules = {}, {}, {}
    for name, value in store.named_parameters():
        where = f"constraint of param {name!r}"
        if id(value) not in owned:
            params[name] = value.detach()
            recorded[name] = encode_constraint(constraints[name], where)
            continue
        # A module's value is its unconstrained tensor (a PyroModule's PyroParam): the
        # constraint that reads it is kept too, so that a resume can compare it.
        with contextlib.suppress(UnsafeStateError):  # a custom one: not compared
            of_modules[name] = encode_constraint(constraints[name], where)
    return {"params": params, "constraints": recorded, "module_constraints": of_modules}


def _class_name(module: torch.nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def write_metrics(path: str | Path, history: list[dict[str, Any]]) -> None:
    """Rewrites the JSON-lines metrics file so it matches ``history`` exactly."""
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in history).encode())


def append_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Appends one record to the JSON-lines metrics file (never through a symlink)."""
    append_line(path, json.dumps(record))


# ---------------------------------------------------------------------------------------
# Reading.


def load_checkpoint(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """Reads and verifies a checkpoint written by :func:`save_checkpoint`; runs no code.

    Raises:
        CheckpointError: naming the file, if it is missing, not a pyro_gen checkpoint of
            this format, truncated, or fails its checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train first or point at a run directory")
    return parse_checkpoint(path.read_bytes(), path, map_location)


def parse_checkpoint(raw: bytes, path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """:func:`load_checkpoint` of the bytes ``raw`` read from ``path`` (named in errors).

    Processes that cannot read the file take its bytes from the one that can, and parse
    them themselves: a parsed checkpoint sent between processes is pickled, which copies
    the constraint singletons (``constraints.real``) that checks compare by identity.

    Raises:
        CheckpointError: as :func:`load_checkpoint` does.
    """
    path = Path(path)
    data = _verified_payload(path, raw)
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # the restricted unpickler refuses with several error types
        raise CheckpointError(
            f"checkpoint {path} passes its checksum but holds objects a checkpoint never "
            f"contains ({type(e).__name__}); it was not loaded. It was crafted or written by "
            "another program: retrain into a fresh directory"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has an unknown layout; it was not loaded")
    return {
        "format": payload["format"],
        "modules": payload["modules"],
        "param_store": {
            "params": payload["param_store"]["params"],
            "constraints": decode(payload["param_store"]["constraints"]),
            # absent from checkpoints written before it was recorded: then not checked
            "module_constraints": decode(payload["param_store"].get("module_constraints", {})),
        },
        "optim": decode(payload["optim"]),
        # absent from checkpoints written before it was recorded: then not checked
        "optim_kind": payload.get("optim_kind"),
        "optim_args": payload.get("optim_args"),
        "rng": decode(payload["rng"]),
        "progress": decode(payload["progress"]),
        # absent when not given to save_checkpoint (and before it was recorded)
        "traced_params": payload.get("traced_params"),
    }


def verify_checkpoint(path: str | Path) -> None:
    """Checks a checkpoint's format, size and SHA-256 without parsing its payload.

    Raises:
        CheckpointError: as :func:`load_checkpoint` does.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train first or point at a run directory")
    _verified_payload(path, path.read_bytes())


def _verified_payload(path: Path, raw: bytes) -> bytes:
    if not raw.startswith(MAGIC):
        if raw.startswith(b"PK\x03\x04") or raw.startswith(b"\x80"):
            kind = "a plain torch.save/pickle file (as older pyro_gen versions wrote)"
        elif not raw:
            kind = "empty"
        else:
            kind = "not a pyro_gen checkpoint"
        raise CheckpointError(
            f"{path} is {kind}; it was not loaded, because unpickling such a file can run "
            "code. Retrain into a fresh directory, or, if you wrote it yourself with an older "
            f"pyro-gen, convert it: pyro-gen convert-checkpoint {path.parent} --trust-pickle"
        )
    end = raw.find(b"\n", len(MAGIC), len(MAGIC) + _HEADER_LIMIT)
    try:
        header = json.loads(raw[len(MAGIC) : end])
        size, digest = int(header["size"]), str(header["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {path} has a damaged header; it was not loaded. Restore it from a "
            "copy, or retrain into a fresh directory"
        ) from e
    data = raw[end + 1 :]
    if len(data) != size:
        raise CheckpointError(
            f"checkpoint {path} is truncated or padded ({len(data)} bytes of data, "
            f"{size} written); it was not loaded. Restore it from a copy, or retrain into a "
            "fresh directory"
        )
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(
            f"checkpoint {path} is damaged (its SHA-256 differs from the one recorded when it "
            "was written); it was not loaded. Restore it from a copy, or retrain into a fresh "
            "directory"
        )
    return data


# ---------------------------------------------------------------------------------------
# Restoring.


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
    sizes = [
        f"{k}: {tuple(saved[k].shape)} saved, {tuple(v.shape)} here"
        for k, v in current.items()
        if k in saved
        and torch.is_tensor(v)
        and torch.is_tensor(saved[k])
        # a lazy module's parameter takes its shape from what is loaded
        and not isinstance(v, torch.nn.parameter.UninitializedTensorMixin)
        and v.shape != saved[k].shape
    ]
    problems.append(f"other shapes {sizes}")
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
        saved_kind, kind = ckpt.get("optim_kind"), optimizer_kind(optim)
        if saved_kind is not None and saved_kind != kind:
            # Pyro loads the saved state into the new optimizer lazily, at its first step,
            # where another torch optimizer fails on a missing key (SGD: KeyError 'momentum')
            raise CheckpointError(
                f"the checkpoint was trained with the optimizer {saved_kind} but this run "
                f"passes {kind}: resume with the same Pyro optimizer (its state, e.g. Adam's "
                "moments, is part of the checkpoint), or train into a fresh directory"
            )
        changed = changed_args(ckpt.get("optim_args"), optim)
        if changed and isinstance(optim, pyro.optim.PyroLRScheduler):
            raise CheckpointError(
                f"this run's {kind} differs from the checkpoint's: {describe(changed)}. The "
                "scheduler's saved state sets the learning rate, so its arguments cannot "
                "change on resume; pass the recorded ones, or train into a fresh directory"
            )
    # Everything is checked: from here on nothing is refused, so nothing is half restored.
    _load_modules(ckpt, modules)
    _restore_param_store(ckpt["param_store"])
    if changed:  # the arguments given apply; the moments and step counts continue
        apply_args(ckpt["optim"], optim, changed)
        logger.warning("resuming with the optimizer arguments given: %s", describe(changed))
    if optim is not None:
        _set_optim_state(optim, ckpt["optim"])
        restore_optim_state(optim, ckpt["optim"], local)
    set_global_rng_state(ckpt["rng"])
    return ckpt["progress"]


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


def optimizer_kind(optim: pyro.optim.PyroOptim) -> str:
    """The torch optimizer (and learning-rate scheduler) a Pyro optimizer wraps, e.g.
    ``"Adam"`` or ``"ExponentialLR(Adam)"``: their states do not load into one another.

    Example:
        >>> optimizer_kind(pyro.optim.ExponentialLR(
        ...     {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}, "gamma": 0.9}))
        'ExponentialLR(SGD)'
    """
    name = getattr(optim.pt_optim_constructor, "__name__", type(optim).__name__)
    scheduler = getattr(optim, "pt_scheduler_constructor", None)
    return name if scheduler is None else f"{getattr(scheduler, '__name__', scheduler)}({name})"


# ---------------------------------------------------------------------------------------
# Exclusive use of a run directory.

_held: dict[str, list[int]] = {}  # real path -> [lock file descriptor, depth]
_held_guard = threading.Lock()


@contextlib.contextmanager
def run_lock(directory: str | Path) -> Iterator[Path]:
    """Exclusive use of a run directory (created if missing) for as long as the block runs.

    Re-entrant within one process, so the command line can take it before writing
    ``config.json`` and :func:`~pyro_gen.infer.fit` take it again. The first acquisition
    removes temporary files that killed writers left behind.

    Raises:
        RunLockedError: at once, naming the directory and the other process, if another
            process holds it.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with run_lock(d), run_lock(d):
        ...     pass
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(directory)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            entry = _held[key] = [_acquire(directory), 1]
    try:
        yield directory
    finally:
        with _held_guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                unlock(entry[0])
                os.close(entry[0])


def _acquire(directory: Path) -> int:
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW, 0o644)
    if not try_lock(fd):
        os.lseek(fd, 0, os.SEEK_SET)
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLockedError(
            f"run directory {directory} is in use by another process (pid {holder}); wait for "
            "it to finish, or choose another directory"
        )
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    remove_stale_temporaries(directory)
    return fd
