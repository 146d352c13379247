"""The metrics' array arguments as tensors: a user's numpy arrays (samples drawn in JAX or
saved with ``np.save``, labels from scikit-learn) are the same data, and a dict from
``pyro.infer.Predictive`` is refused naming the site to pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


def as_tensor(x: object, name: str, what: str) -> torch.Tensor:
    """``x`` as a tensor (numpy arrays share their memory); anything else is refused,
    naming the argument ``name`` and what it should be, ``what``.

    Numpy arrays failed with "'numpy.ndarray' object has no attribute 'dim'" (or ``'to'``,
    ``'is_floating_point'``) from inside each metric.

    Example:
        >>> as_tensor(np.arange(3), "predicted", "classes")
        tensor([0, 1, 2])
        >>> as_tensor(torch.ones(2, dtype=torch.cfloat), "f1", "features")
        Traceback (most recent call last):
        ...
        TypeError: f1 must be features with real values, got dtype torch.complex64: ...
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        # complex values were cast to real with only torch's UserWarning, the imaginary
        # part dropped: a distance or count of other data than the user's
        if x.is_complex():
            raise TypeError(
                f"{name} must be {what} with real values, got dtype {x.dtype}: pass x.real or "
                "x.abs(), whichever your measure means"
            )
        return x
    if isinstance(x, dict):
        site = "x" if "x" in x else sorted(x)[0] if x else "x"
        raise TypeError(
            f"{name} must be {what}, got a dict with sites {sorted(x)} (pyro.infer.Predictive's "
            f"output): pass the one site, e.g. {name}[{site!r}]"
        )
    raise TypeError(f"{name} must be {what}, a tensor or numpy array, got {type(x).__name__}")


def results_equal(a: object, b: object) -> bool:
    """Whether two metric results (dataclasses holding tensors) hold the same values: the
    dataclass's own ``==`` compared their tensors with ``==`` and failed with torch's
    "Boolean value of Tensor with more than one value is ambiguous".

    Example:
        >>> @dataclasses.dataclass(eq=False)
        ... class Result:
        ...     counts: torch.Tensor
        ...     __eq__ = results_equal
        >>> Result(torch.ones(2)) == Result(torch.ones(2)), Result(torch.ones(2)) == 1
        (True, False)
    """
    if type(a) is not type(b):
        return NotImplemented
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            same = (
                isinstance(x, torch.Tensor)
                and isinstance(y, torch.Tensor)
                and x.device == y.device
                and x.dtype == y.dtype
                and torch.equal(x, y)
            )
        else:
            same = x == y
        if not same:
            return False
    return True
