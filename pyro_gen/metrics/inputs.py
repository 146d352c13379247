"""The metrics' array arguments as tensors: a user's numpy arrays (samples drawn in JAX or
saved with ``np.save``, labels from scikit-learn) are the same data, and a dict from
``pyro.infer.Predictive`` is refused naming the site to pass."""

from __future__ import annotations

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
    """
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, dict):
        site = "x" if "x" in x else sorted(x)[0] if x else "x"
        raise TypeError(
            f"{name} must be {what}, got a dict with sites {sorted(x)} (pyro.infer.Predictive's "
            f"output): pass the one site, e.g. {name}[{site!r}]"
        )
    raise TypeError(f"{name} must be {what}, a tensor or numpy array, got {type(x).__name__}")
