"""Reading a checkpoint: header, size and SHA-256 checked, then a weights_only parse."""

from __future__ import annotations

import hashlib
import io
import os
import random
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributions.constraints import Constraint

from pyro_gen.infer.checkpoint_format import FORMAT_VERSION, MAGIC, CheckpointError, parse_json
from pyro_gen.infer.compiled_resume import compile_record_problem
from pyro_gen.infer.state_codec import decode

_HEADER_LIMIT = 4096


def load_checkpoint(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """Reads and verifies a checkpoint written by :func:`save_checkpoint`; runs no code.

    Raises:
        CheckpointError: naming the file, if it is missing, not a pyro_gen checkpoint of
            this format, truncated, or fails its checksum.
    """
    return parse_checkpoint(read_checkpoint_bytes(path), path, map_location)


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
    try:
        ckpt = _parts(payload)
        problem = _layout_problem(ckpt)
    # A payload that passes its checksum was written by pyro_gen or crafted to pass it: a
    # crafted one's missing keys, wrong types or undecodable entries fail in these ways.
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        OverflowError,
        IndexError,
        RuntimeError,  # torch's refusal of a generator state
    ) as e:
        problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        raise CheckpointError(
            f"checkpoint {path} passes its checksum but has an unknown layout ({problem}); it "
            "was not loaded. It was written by another program: retrain into a fresh directory"
        )
    return ckpt


def _parts(payload: dict[str, Any]) -> dict[str, Any]:
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
        # absent without a compiled step (and before it was recorded): programs start afresh
        "compiled_step": payload.get("compiled_step"),
    }


def _layout_problem(ckpt: dict[str, Any]) -> str | None:
    """What in a decoded checkpoint has another type than restoring it indexes, or None."""
    modules, store = ckpt["modules"], ckpt["param_store"]
    if not isinstance(modules, dict):
        return "modules is not a dict"
    for name, entry in modules.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("class"), str)
            and isinstance(entry.get("state_dict"), dict)
            and all(isinstance(k, str) for k in entry["state_dict"])
        ):
            return f"module {name!r} is not a class name and a state_dict"
    params, constraints = store["params"], store["constraints"]
    if not isinstance(params, dict) or not all(torch.is_tensor(v) for v in params.values()):
        return "the param store's params are not tensors by name"
    if not isinstance(constraints, dict) or not isinstance(store["module_constraints"], dict):
        return "the param store's constraints are not a dict"
    for name in params:
        if not isinstance(constraints.get(name), Constraint):
            return f"param {name!r} has no constraint"
    for name, constraint in store["module_constraints"].items():
        if not isinstance(constraint, Constraint):
            return f"the constraint of {name!r} is not a constraint"
    for key in ("optim", "rng", "progress"):
        if not isinstance(ckpt[key], dict):
            return f"{key} is not a dict"
    problem = _optimizer_state_problem(ckpt["optim"], params)
    if problem is not None:
        return problem
    rng = ckpt["rng"]
    # Each stream's state is set on a throwaway generator of its kind: what would fail to
    # restore (a random state that is not a tuple) fails here, before anything is restored.
    random.Random().setstate(rng["random"])
    np.random.RandomState().set_state(rng["numpy"])
    torch.Generator().set_state(rng["torch"].cpu())
    # absent before it was recorded; restoring sets each on the loader's own generator
    loader_states = ckpt["progress"].get("loader_generator_states")
    if loader_states is not None and not (
        isinstance(loader_states, list)
        and all(torch.is_tensor(s) and s.dtype == torch.uint8 for s in loader_states)
    ):
        return "the data loader's generator states are not uint8 tensors"
    for key in ("optim_kind", "optim_args"):
        if not isinstance(ckpt[key], (str, type(None))):
            return f"{key} is not a string"
    traced = ckpt["traced_params"]
    if traced is not None and not (
        isinstance(traced, list) and all(isinstance(n, str) for n in traced)
    ):
        return "traced_params is not a list of names"
    return compile_record_problem(ckpt["compiled_step"])


# Per-parameter state that torch's optimizers keep as a tensor of the parameter's shape
# (Adam, AdamW, NAdam, RAdam, Adamax, SGD, RMSprop, Adadelta, Adagrad, Rprop, ASGD).
PARAM_SHAPED = (
    "exp_avg",
    "exp_avg_sq",
    "max_exp_avg_sq",
    "exp_inf",
    "momentum_buffer",
    "square_avg",
    "grad_avg",
    "acc_delta",
    "sum",
    "prev",
    "step_size",
    "ax",
)


def _optimizer_state_problem(optim: dict[Any, Any], params: dict[str, Any]) -> str | None:
    """What in the optimizer's saved state would fail at the first training step instead of
    here (a float where Adam keeps a tensor, moments of two shapes), or None. Each
    entry is Pyro's per-parameter state dict, or a scheduler's pair of them."""
    for name, entry in optim.items():
        if not isinstance(entry, dict):
            return f"the optimizer state of {name!r} is not a dict"
        for state_dict in (entry.get("optimizer"),) if "scheduler" in entry else (entry,):
            states = state_dict.get("state") if isinstance(state_dict, dict) else None
            if not isinstance(states, dict) or not all(map(_is_dict, states.values())):
                return f"the optimizer state of {name!r} is not a state dict"
            # the parameter's shape where the param store holds it; a module's parameters are
            # saved with the module (under other names): there its moments must agree
            known = params[name].shape if name in params else None
            for state in states.values():
                shape = known
                for key in PARAM_SHAPED:
                    value = state.get(key)
                    if value is None:  # absent (or SGD's momentum buffer before its first step)
                        continue
                    if not torch.is_tensor(value) or (shape is not None and value.shape != shape):
                        return f"the optimizer's {key!r} of {name!r} is not a tensor of its shape"
                    shape = value.shape
                step = state.get("step")
                if step is not None and not (
                    (torch.is_tensor(step) and step.numel() == 1)
                    or (isinstance(step, (int, float)) and not isinstance(step, bool))
                ):
                    return f"the optimizer's step count of {name!r} is not a number"
    return None


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def verify_checkpoint(path: str | Path) -> None:
    """Checks a checkpoint's format, size and SHA-256 without parsing its payload.

    Raises:
        CheckpointError: as :func:`load_checkpoint` does.
    """
    path = Path(path)
    _verified_payload(path, read_checkpoint_bytes(path))


def read_checkpoint_bytes(path: str | Path) -> bytes:
    """The bytes of the checkpoint at ``path``, read whole only once its first bytes are a
    checkpoint's header and the size that header records is the file's.

    A file of another kind under the checkpoint's name (gigabytes of zeros, a dataset, a
    disk image) was read whole into memory before its first bytes were looked at; now it
    is refused after at most a header's worth of bytes, as is a checkpoint padded or cut.

    Raises:
        CheckpointError: as :func:`load_checkpoint` does, naming the file.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "checkpoint.pt"
        >>> _ = p.write_bytes(bytes(1000))
        >>> read_checkpoint_bytes(p)
        Traceback (most recent call last):
        ...
        pyro_gen.infer.checkpoint_format.CheckpointError: ... is not a pyro_gen checkpoint; ...
    """
    path = Path(path)
    missing = CheckpointError(f"no checkpoint at {path}: train first or point at a run directory")
    try:
        # O_NONBLOCK: a FIFO under the checkpoint's name would block the open forever
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        raise missing from e
    except OSError as e:  # unreadable (permissions, an I/O error): say so by name
        raise CheckpointError(
            f"cannot read checkpoint {path} ({e.strerror}); make it readable, or retrain into "
            "a fresh directory"
        ) from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # a directory or a FIFO under the checkpoint's name
        os.close(fd)
        raise missing
    with os.fdopen(fd, "rb") as f:
        head = f.read(len(MAGIC) + _HEADER_LIMIT)
        end, header = _header(path, head)
        _check_size(path, info.st_size - (end + 1), header["size"])
        return head + f.read(end + 1 + header["size"] - len(head))


def _header(path: Path, raw: bytes) -> tuple[int, dict[str, Any]]:
    """Where the header line of the checkpoint bytes ``raw`` ends, and what it records."""
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
        if end < 0:  # no end of header line: the file is cut inside it, or is not ours
            raise ValueError("no header line")
        header = parse_json(raw[len(MAGIC) : end])
        header = {"size": int(header["size"]), "sha256": str(header["sha256"])}
    # OverflowError: JSON's Infinity (or 1e400) as the size, which int() cannot convert
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise CheckpointError(
            f"checkpoint {path} has a damaged header; it was not loaded. Restore it from a "
            "copy, or retrain into a fresh directory"
        ) from e
    return end, header


def _check_size(path: Path, found: int, written: int) -> None:
    if found != written:
        raise CheckpointError(
            f"checkpoint {path} is truncated or padded ({found} bytes of data, "
            f"{written} written); it was not loaded. Restore it from a copy, or retrain into a "
            "fresh directory"
        )


def _verified_payload(path: Path, raw: bytes) -> bytes:
    end, header = _header(path, raw)
    data = raw[end + 1 :]
    _check_size(path, len(data), header["size"])
    if hashlib.sha256(data).hexdigest() != header["sha256"]:
        raise CheckpointError(
            f"checkpoint {path} is damaged (its SHA-256 differs from the one recorded when it "
            "was written); it was not loaded. Restore it from a copy, or retrain into a fresh "
            "directory"
        )
    return data
