"""The kinds of arguments ``fit``, evaluation and ``LightningSVI`` take, checked before
anything runs."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["check_kinds"]


def _is_flag(value: Any) -> bool:
    return not isinstance(value, str) and value in (True, False)


def check_kinds(**given: Any) -> None:
    """Refuses arguments of ``fit`` and evaluation of the wrong kind before anything runs:
    each would otherwise fail at its first use with Python's bare message
    (``annealing=0.5``: "'float' object is not callable", at the first step) or pass
    silently (``compile="no"`` and ``per_example="no"`` are truthy, ``plate_name=3`` matches
    no plate).

    Example:
        >>> check_kinds(compile=None, annealing=None, plate_name="data", checkpoint_dir="runs/a")
        >>> try:
        ...     check_kinds(annealing=0.5)
        ... except TypeError as e:
        ...     print(str(e).split(" (")[0])
        annealing must be a function of the step number returning the KL weight
    """
    wanted = {
        "compile": (lambda v: v is None or isinstance(v, bool), "None, True or False"),
        "annealing": (
            lambda v: v is None or callable(v),
            "a function of the step number returning the KL weight (e.g. lambda step: "
            "min(1.0, step / 1000)), or None",
        ),
        "plate_name": (lambda v: v is None or isinstance(v, str), "a pyro.plate's name, or None"),
        "checkpoint_dir": (
            lambda v: v is None or isinstance(v, (str, os.PathLike)),
            "a directory path (str or pathlib.Path), or None",
        ),
        # "no" is truthy: per_example="no" returned a tensor where a float was wanted
        **dict.fromkeys(("progress", "clear_params", "per_example"), (_is_flag, "True or False")),
    }
    for name, value in given.items():
        ok, what = wanted[name]
        if not ok(value):
            raise TypeError(f"{name} must be {what}; got the {type(value).__name__} {value!r}")
