"""Atomic checkpoints of a training run: module, optimizer, param store, RNG and progress."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyro
import pyro.util
import torch

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to another model."""


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` so readers see either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrites the JSON-lines metrics file so it matches ``history`` exactly."""
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in history).encode())


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _non_module_params(state: dict[str, Any]) -> dict[str, Any]:
    # Parameters registered through pyro.module are restored through the module's own
    # state_dict; restoring them into the store too would split them from the module.
    params = state["params"]
    return {
        n: v
        for n, v in params.items()
        if pyro.params.param_store._MODULE_NAMESPACE_DIVIDER not in n
    }


def save_checkpoint(
    path: Path, gen_model: torch.nn.Module, optim: pyro.optim.PyroOptim, progress: dict[str, Any]
) -> None:
    store = pyro.get_param_store().get_state()
    atomic_torch_save(
        {
            "model_class": f"{type(gen_model).__module__}.{type(gen_model).__qualname__}",
            "model_state": gen_model.state_dict(),
            "param_store": {
                "params": _non_module_params(store),
                "constraints": store["constraints"],
            },
            "optim_state": optim.get_state(),
            "rng_state": pyro.util.get_rng_state(),
            "progress": progress,
        },
        path,
    )


def load_checkpoint(path: Path, map_location: torch.device | str | None = None) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint`, with one clear error if it can't."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train first or point at a run directory")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises several types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({e}); delete it to start over"
        ) from e


def restore_model(ckpt: dict[str, Any], gen_model: torch.nn.Module) -> None:
    """Loads a checkpoint's module state and its ``pyro.param`` values (not the optimizer)."""
    expected = f"{type(gen_model).__module__}.{type(gen_model).__qualname__}"
    if ckpt["model_class"] != expected:
        raise CheckpointError(
            f"checkpoint holds a {ckpt['model_class']}, not a {expected}: "
            "use a fresh checkpoint directory for a different model"
        )
    try:
        gen_model.load_state_dict(ckpt["model_state"])
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint does not fit this model's architecture ({e}); "
            "use the same options as the run that wrote it"
        ) from e
    device = next(iter(gen_model.state_dict().values()), torch.empty(0)).device
    saved = ckpt["param_store"]
    pyro.get_param_store().set_state(
        {
            "params": {
                n: v.detach().to(device).requires_grad_() for n, v in saved["params"].items()
            },
            "constraints": {n: saved["constraints"][n] for n in saved["params"]},
        }
    )


def restore_checkpoint(
    ckpt: dict[str, Any], gen_model: torch.nn.Module, optim: pyro.optim.PyroOptim
) -> dict[str, Any]:
    """Loads a checkpoint's state into a model, the param store, the optimizer and the RNGs,
    and returns the saved progress (epoch, step, history)."""
    restore_model(ckpt, gen_model)
    optim.set_state(ckpt["optim_state"])
    pyro.util.set_rng_state(ckpt["rng_state"])
    return ckpt["progress"]
