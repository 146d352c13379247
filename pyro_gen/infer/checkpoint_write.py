"""Writing checkpoints (module states, the param store, the optimizer, RNG) and metrics."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch

from pyro_gen.data.random_state import global_rng_state
from pyro_gen.infer.checkpoint_format import FORMAT_VERSION, MAGIC, CheckpointError
from pyro_gen.infer.compiled_resume import compile_record
from pyro_gen.infer.files import append_line, atomic_write_bytes
from pyro_gen.infer.local_params import optim_state
from pyro_gen.infer.optim_args import optimizer_args
from pyro_gen.infer.state_codec import UnsafeStateError, encode, encode_constraint


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
    so that :func:`restore_checkpoint` can tell a model that lost a ``pyro.param`` since;
    with them, the store's other entries are saved only where ``optim`` has trained them
    (a loss's own), not the user's params of other models.
    ``local_params``: the params outside the param store (a PyroModule's own under Pyro's
    ``module_local_params``) by site name, whose optimizer state is kept under that name
    (:mod:`pyro_gen.infer.local_params`).

    Raises:
        CheckpointError: if some state cannot be stored without pickling code (it names it).
    """
    payload = encode_checkpoint(
        path,
        modules=modules,
        optim=optim,
        progress=progress,
        params=params,
        local_params=local_params,
    )
    write_payload(path, payload)


def encode_checkpoint(
    path: str | Path,
    *,
    modules: Mapping[str, torch.nn.Module],
    optim: pyro.optim.PyroOptim,
    progress: dict[str, Any] | None = None,
    params: Iterable[str] | None = None,
    local_params: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The payload :func:`save_checkpoint` writes to ``path`` (named in errors), built
    without writing: ``fit`` builds one before training, so that state no checkpoint can
    hold (a user's own constraint class) is refused before an epoch's work, not after it.

    Raises:
        CheckpointError: as :func:`save_checkpoint` does.

    Example:
        >>> import pyro.optim
        >>> encode_checkpoint("c.pt", modules={}, optim=pyro.optim.Adam({}))["format"]
        2
    """
    check_state_arguments(modules, optim)
    try:
        optim_states = optim_state(optim, local_params or {})
        # With the traced names given, a store entry the program neither registers nor has
        # trained is a bystander of the user's (another model's param): kept out, it was
        # restored over the user's value on resume, or refused as "changed" by its shape.
        ours = None if params is None else {*params, *(n for n in optim_states if n is not None)}
        payload = {
            "format": FORMAT_VERSION,
            "modules": {name: _module_entry(name, m) for name, m in modules.items()},
            "param_store": _param_store_entry(modules, ours),
            "optim": encode(optim_states, "optimizer state"),
            "optim_kind": optimizer_kind(optim),
            "optim_args": optimizer_args(optim, local_params),
            "rng": encode(global_rng_state(), "RNG state"),
            "progress": encode(dict(progress or {}), "progress"),
        }
        if params is not None:
            payload["traced_params"] = sorted(set(params))
        # Which steps the compiled step trains with its recorded programs (Inductor rounds
        # otherwise than Pyro's own step): a resume continues on the same path.
        record = compile_record(optim)
        if record is not None:
            payload["compiled_step"] = encode(record, "compiled step")
    except UnsafeStateError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e}") from e
    return payload


def check_state_arguments(modules: Any, optim: Any) -> None:
    """Refuses ``modules`` that are not networks by name and an ``optim`` that is not a Pyro
    optimizer, naming the argument: ``modules=net`` and ``optim=torch.optim.Adam(...)``
    failed inside with ``'Linear' object has no attribute 'items'`` and ``'Adam' object has no
    attribute 'get_state'``.

    Example:
        >>> check_state_arguments(torch.nn.Linear(1, 1), None)
        Traceback (most recent call last):
        ...
        TypeError: modules must map names to torch.nn.Module objects, ...
    """
    if not isinstance(modules, Mapping) or not all(
        isinstance(k, str) and isinstance(m, torch.nn.Module) for k, m in modules.items()
    ):
        raise TypeError(
            "modules must map names to torch.nn.Module objects, e.g. modules={'model': net}, "
            f"got {type(modules).__name__}"
        )
    if optim is not None and not isinstance(optim, pyro.optim.PyroOptim):
        raise TypeError(
            "optim must be a pyro.optim.PyroOptim such as pyro.optim.Adam({'lr': 1e-3}) (its "
            f"state is what a checkpoint keeps), got {type(optim).__name__}"
        )


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


def _param_store_entry(
    modules: Mapping[str, torch.nn.Module], ours: set[str] | None = None
) -> dict[str, Any]:
    # A pyro.module parameter is the module's own tensor: its state_dict already holds it.
    # Anything else in the store (pyro.param sites, networks registered by a loss that is not
    # among ``modules``) is saved here.
    owned = {id(t) for m in modules.values() for t in itertools.chain(m.parameters(), m.buffers())}
    store = pyro.get_param_store()
    constraints = store.get_state()["constraints"]
    params, recorded, of_modules = {}, {}, {}
    for name, value in store.named_parameters():
        if ours is not None and name not in ours:
            continue
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
    atomic_write_bytes(path, _metrics_bytes(history))


def records_match(path: str | Path, history: list[dict[str, Any]]) -> bool:
    """Whether the metrics file at ``path`` holds exactly ``history`` (False if missing).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "metrics.jsonl"
        >>> write_metrics(p, [{"epoch": 1, "train_loss": 0.5}])
        >>> records_match(p, [{"epoch": 1, "train_loss": 0.5}]), records_match(p, [])
        (True, False)
    """
    expected = _metrics_bytes(history)
    try:
        # the size first: a file of another length is not read (it may be large)
        return Path(path).stat().st_size == len(expected) and Path(path).read_bytes() == expected
    except OSError:
        return False


def _metrics_bytes(history: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in history).encode()


def append_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Appends one record to the JSON-lines metrics file (never through a symlink)."""
    append_line(path, json.dumps(record))


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
