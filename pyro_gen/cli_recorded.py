"""The settings a run's ``config.json`` may record, as ``pyro-gen train`` records them.

A hand-edited or damaged ``config.json`` is refused by every command that reads the run,
naming the setting, before anything is built or computed from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyro_gen.cli_models import MODELS
from pyro_gen.cli_parser import recorded_setting_problem
from pyro_gen.cli_settings import OPTION_DEFAULTS
from pyro_gen.runs import CONFIG_NAME, RunError


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _positive_number(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


# The training settings a resume reads from config.json, as `pyro-gen train` records them
# (the checks its command line makes); absent ones are refused, except where noted.
_RECORDED_SETTINGS: dict[str, Callable[[Any], bool]] = {
    "batch_size": lambda v: _whole(v, 1),
    "lr": _positive_number,
    "grad_clip": lambda v: v is None or _positive_number(v),
    "subset": lambda v: v is None or _whole(v, 1),
    "test_subset": lambda v: v is None or _whole(v, 1),
    "seed": lambda v: _whole(v, 0) and v < 2**32,  # what numpy's seed takes
}
# recorded by later versions: a run from before them has its default
_ADDED_LATER_SETTINGS: dict[str, Callable[[Any], bool]] = {
    "eval_every": lambda v: _whole(v, 1),
    "toy_samples": lambda v: _whole(v, 1),
}


def check_recorded_settings(config: dict[str, Any], out: Path) -> None:
    """Refuses a config.json whose training settings or model options no run records (a
    damaged or edited file), naming it and the setting, before a command computes with them.

    Every command that reads a run checks them, not only a resume: ``sample`` and
    ``evaluate`` took a run whose ``missing_rate`` was ``"0"`` or whose ``k`` was null,
    which ``train`` refused (and ``evaluate`` reads the seed).

    Raises:
        RunError: one line naming the file, the setting and its value.

    Example:
        >>> check_recorded_settings({"model": "vae", "options": {}, "batch_size": 64,
        ...                          "lr": "0.001"}, Path("r"))
        Traceback (most recent call last):
        ...
        pyro_gen.runs.RunError: r/config.json records lr = '0.001', which `pyro-gen train` ...
    """
    path = out / CONFIG_NAME
    for name, valid in {**_RECORDED_SETTINGS, **_ADDED_LATER_SETTINGS}.items():
        if name not in config:
            if name in _RECORDED_SETTINGS:
                raise RunError(
                    f"{path} lacks the setting {name!r}; restore it from a copy or retrain "
                    "into a fresh directory"
                )
        elif not valid(config[name]):
            raise RunError(
                f"{path} records {name} = {config[name]!r}, which `pyro-gen train` never "
                "records; restore it from a copy or retrain into a fresh directory"
            )
    # the model options as their flags check them (a loss 'xyz' escaped as KeyError, an
    # iwae k of 0 as ZeroDivisionError, a cycle weight 'x' as TypeError: tracebacks)
    spec = MODELS[config["model"]]
    for name, value in config["options"].items():
        if name not in OPTION_DEFAULTS:  # recorded by the command itself (num_bins)
            continue
        allowed = spec.choices.get(name)
        if recorded_setting_problem(name, value) or (allowed and value not in allowed):
            raise RunError(
                f"{path} records the {config['model']} option {name} = {value!r}, which "
                "`pyro-gen train` never records; restore it from a copy or retrain into a "
                "fresh directory"
            )
