"""Whether a device the user names can hold a model on this machine."""

from __future__ import annotations

import torch

__all__ = ["device_problem"]


def device_problem(device: torch.device) -> str | None:
    """Why ``device`` cannot hold a trained model here, in words that say what to use
    instead, or None when it can. Torch's own failure comes later and says less (a CPU-only
    build: ``AssertionError: Torch not compiled with CUDA enabled``).

    Example:
        >>> device_problem(torch.device("cpu")) is None
        True
        >>> device_problem(torch.device("meta"))
        'cannot hold a trained model; use cpu, cuda or cuda:N'
    """
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return "no CUDA device is available here; use cpu"
        if device.index is not None and device.index >= count:
            return f"there are {count} CUDA devices (0..{count - 1})"
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            return "MPS is not available here; use cpu"
    elif device.type != "cpu":
        return "cannot hold a trained model; use cpu, cuda or cuda:N"
    return None
