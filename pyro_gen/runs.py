"""Run directories: the config a run was trained with, its checkpoint, metrics and figures.

A run directory holds ``config.json`` (model name, dataset, options), ``checkpoint.pt``
and ``metrics.jsonl`` written by :func:`pyro_gen.infer.fit`, and the PNG figures the
command line writes. :func:`pyro_gen.load` turns one back into a trained model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pyro_gen.infer.checkpoint import CHECKPOINT_NAME, CheckpointError, atomic_write_bytes

CONFIG_NAME = "config.json"


class RunError(ValueError):
    """A run directory is missing, incomplete, or belongs to another kind of run."""


def write_config(run: Path, config: dict[str, Any]) -> None:
    atomic_write_bytes(run / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())


def read_config(run: str | Path) -> dict[str, Any]:
    run = Path(run)
    if not run.is_dir():
        raise RunError(f"run directory {run} does not exist: train one with `pyro-gen train`")
    path = run / CONFIG_NAME
    if not path.is_file():
        raise RunError(f"{run} has no {CONFIG_NAME}: it is not a pyro-gen run directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e}); retrain into a fresh directory") from e


def checkpoint_path(run: str | Path) -> Path:
    path = Path(run) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"{run} has no {CHECKPOINT_NAME}: training has not finished an epoch")
    return path
