"""Run directories: the config a run was trained with, its checkpoint, metrics and figures.

A run directory holds ``config.json`` (model name, dataset, options, training settings),
``checkpoint.pt`` and ``metrics.jsonl`` written by :func:`pyro_gen.infer.fit`, and the PNG
figures the command line writes. :func:`pyro_gen.load` turns one back into a trained model,
and :func:`run_data` gives the data it trained on and is scored on, as the model takes them.
Everything here is parsed as JSON, never unpickled, and checked before it is used.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyro_gen.infer.checkpoint import CHECKPOINT_NAME, METRICS_NAME, CheckpointError
from pyro_gen.infer.checkpoint_format import parse_json
from pyro_gen.infer.checkpoint_metrics import METRICS_LIMIT
from pyro_gen.infer.files import atomic_write_bytes

CONFIG_NAME = "config.json"
# A run's config.json is under a kilobyte: a bigger file under the name (a dataset, a file
# of zeros) was read whole into memory before being refused as not JSON.
_CONFIG_LIMIT = 2**20
# What a config must hold to rebuild its model; everything else has a default.
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "data": str,
    "options": dict,
    "event_shape": list,
}


class RunError(ValueError):
    """A run directory is missing, incomplete, or belongs to another kind of run."""


def write_config(run: str | Path, config: dict[str, Any]) -> None:
    """Writes ``run/config.json`` atomically, never through a symlink."""
    atomic_write_bytes(Path(run) / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())


def read_config(run: str | Path) -> dict[str, Any]:
    """The parsed and checked ``config.json`` of a run directory.

    Raises:
        RunError: naming the file and what is wrong with it.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / CONFIG_NAME).write_text("[1, 2]")
        >>> read_config(d)
        Traceback (most recent call last):
        ...
        pyro_gen.runs.RunError: .../config.json holds a list, not an object ...
    """
    run = Path(run)
    if not run.is_dir():
        if run.exists() and (run.parent / CONFIG_NAME).is_file():  # a run's own file
            raise RunError(
                f"{run} is a file of the run directory {run.parent}; give {run.parent} itself"
            )
        kind = "is a file, not a run directory" if run.exists() else "does not exist"
        raise RunError(f"run directory {run} {kind}: train one with `pyro-gen train`")
    path = run / CONFIG_NAME
    if not path.is_file():
        if (run / CHECKPOINT_NAME).is_file():
            # fit(checkpoint_dir=) writes a checkpoint but no config: the model is the user's
            raise RunError(
                f"{run} has a {CHECKPOINT_NAME} but no {CONFIG_NAME}, so no model can be "
                "rebuilt from it: it is a fit(checkpoint_dir=...) directory (or a `pyro-gen "
                f"train` run that lost its {CONFIG_NAME}: restore that from a copy). Build your "
                "model and guide as they were, then restore them with pyro_gen.infer.fit(model, "
                f"data, guide=guide, checkpoint_dir={str(run)!r}, steps=0), which restores the "
                "checkpoint and trains nothing"
            )
        raise RunError(
            f"{run} has no {CONFIG_NAME}: it is not a pyro-gen run directory; point at the "
            f"--out directory of `pyro-gen train`{_runs_inside(run)}"
        )
    size = path.stat().st_size
    if size > _CONFIG_LIMIT:
        raise RunError(
            f"{path} is {size} bytes, not the settings of a run (a few hundred bytes); it was "
            "not read. Restore it from a copy, or retrain into a fresh directory"
        )
    try:
        config = parse_json(path.read_text())
    except ValueError as e:  # not JSON, not UTF-8, or nested too deeply
        raise RunError(f"{path} is not valid JSON ({e}); retrain into a fresh directory") from e
    if not isinstance(config, dict):
        raise RunError(
            f"{path} holds a {type(config).__name__}, not an object with the run's settings; "
            "it was not written by pyro-gen: retrain into a fresh directory"
        )
    problems = [
        f"{key!r} ({'missing' if key not in config else 'not a ' + kind.__name__})"
        for key, kind in _REQUIRED.items()
        if not isinstance(config.get(key), kind)
    ]
    if not problems and not all(isinstance(n, int) and n > 0 for n in config["event_shape"]):
        problems.append("'event_shape' (not a list of positive integers)")
    if problems:
        raise RunError(
            f"{path} lacks settings a run needs: {', '.join(problems)}; restore it from a copy "
            "or retrain into a fresh directory"
        )
    return config


# Runs named when a command is pointed at the folder that holds them (e.g. runs/).
_RUNS_NAMED = 10


def _runs_inside(folder: Path) -> str:
    """``"; it holds RUN, RUN, ..."``: the run directories right inside ``folder``, for a
    user who named the folder of their runs; empty where there are none."""
    try:
        runs = sorted(p for p in folder.iterdir() if (p / CONFIG_NAME).is_file())
    except OSError:  # unreadable: the error says what it said before
        return ""
    if not runs:
        return ""
    more = f", and {len(runs) - _RUNS_NAMED} more" if len(runs) > _RUNS_NAMED else ""
    return f"; it holds {', '.join(str(p) for p in runs[:_RUNS_NAMED])}{more}"


def checkpoint_path(run: str | Path) -> Path:
    """``run/checkpoint.pt``, which must exist."""
    path = Path(run) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"{run} has no {CHECKPOINT_NAME}: training has not finished an epoch")
    return path


def probe_writable(directory: str | Path, what: str) -> None:
    """Checks that files can be created in ``directory`` before any long computation.

    Raises:
        RunError: naming the directory, the reason and ``what`` was to be written.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".probe.", suffix=".tmp")
    except OSError as e:
        raise RunError(
            f"cannot write {what} into {directory} ({e.strerror}): make it writable, or "
            "choose another directory"
        ) from e
    os.close(fd)
    os.unlink(tmp)


def recorded_epochs(run: str | Path) -> int:
    """The epochs a run's metrics.jsonl records as finished (0 without one, or with one
    that is not a run's: a FIFO under the name blocked its read forever, and a file of
    gigabytes was read whole)."""
    path = Path(run) / METRICS_NAME
    try:
        if not path.is_file() or path.stat().st_size > METRICS_LIMIT:
            return 0
        lines = path.read_text().splitlines()
        return sum(1 for line in lines if line.strip() and not parse_json(line).get("partial"))
    except (OSError, ValueError, AttributeError):  # no records, or not ours: train anew
        return 0


def run_data(
    run: str | Path, split: str = "test", limit: int | None = None
) -> tuple[Any, Callable[[Any], Any] | None]:
    """The ``split`` of a ``pyro-gen train`` run's dataset as its model takes it, and the
    transform applied to each batch (None for none), in the forms that
    :func:`pyro_gen.infer.fit`, :func:`~pyro_gen.infer.evaluate_elbo` and
    :func:`~pyro_gen.infer.iwae_log_likelihood` take as ``data`` and ``transform=``.

    The model of :func:`pyro_gen.load` expects its data as training prepared them: pixels
    binarized afresh for each batch for a VAE, dequantized for a flow on images, with the
    run's mask for a ``--missing-rate`` VAE (a dict ``{"x": ..., "mask": ...}``), with the
    labels for a conditional GAN. ``test`` is what ``pyro-gen evaluate`` scores, ``train``
    what ``fit`` trained on (its first ``--subset`` examples).

    Args:
        run: a run directory of ``pyro-gen train``.
        split: ``"test"`` or ``"train"``.
        limit: only the first ``limit`` examples (``evaluate --num-test``); default all
            (for ``train``, the run's ``--subset``).

    Raises:
        RunError: the directory or its ``config.json`` is missing or malformed.
        ValueError: ``split`` or ``limit`` is not one of the values above.

    Example:
        >>> import contextlib, io, tempfile
        >>> from pyro_gen.cli import main
        >>> run = Path(tempfile.mkdtemp()) / "vae"
        >>> args = ["train", "vae", "--data", "digits", "--epochs", "0", "--out", str(run)]
        >>> with contextlib.redirect_stdout(io.StringIO()):  # --epochs 0: the settings only
        ...     status = main(args)
        >>> status
        0
        >>> x, transform = run_data(run, "test", limit=5)
        >>> x.shape, x.dtype, sorted(transform(x).unique().tolist())
        (torch.Size([5, 8, 8]), torch.uint8, [0.0, 1.0])
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None (all examples), got {limit!r}")
    # Imported here: the command line's tables of models import this module.
    from pyro_gen.cli_models import check_model, load_split, run_options
    from pyro_gen.cli_spec import data_view

    config = read_config(run)
    spec = check_model(config, run)
    if limit is None and split == "train":
        limit = config.get("subset")
    x, y = load_split(config["data"], split, config, limit)
    view = data_view(spec.data_kind(run_options(config)), config["data"], x)
    return spec.fit_data(view.x, y, config, split), view.transform
