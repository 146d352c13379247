"""Bit-for-bit comparison of saved training state (parameters, optimizer state, RNG states),
shared by the reliability tests of users' own programs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    """``a`` and ``b`` hold the same values bit for bit (tensors, arrays, nested dicts, lists
    and tuples); ``where`` names the path to a difference."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max difference {(a - b).abs().max()}"
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
