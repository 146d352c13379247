"""Where a module, or the first of several modules, keeps its tensors."""

from __future__ import annotations

import itertools

import torch

__all__ = ["module_device", "modules_device"]


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a stateless module).

    Example:
        >>> module_device(torch.nn.Linear(2, 3)), module_device(torch.nn.ReLU())
        (device(type='cpu'), device(type='cpu'))
    """
    return modules_device([module]) or torch.device("cpu")


def modules_device(modules: list[torch.nn.Module]) -> torch.device | None:
    """Where the first parameter or buffer of ``modules`` lives; None when they have none."""
    for m in modules:
        for t in itertools.chain(m.parameters(), m.buffers()):
            return t.device
    return None
