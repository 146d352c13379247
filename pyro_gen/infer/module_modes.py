"""The train/eval modes of a user's modules, taken and given back submodule by submodule.

``module.train(mode)`` sets every submodule: giving back a module's own mode that way after
an evaluation (which runs in eval mode) put a part the user had frozen (a pretrained
batch norm, ``decoder[1].eval()``) back into training mode, so its statistics moved on
the next step. Pyro's SVI leaves modes to the user; so do ``fit`` and the evaluations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

__all__ = ["evaluation_mode", "module_modes", "restore_modes"]

Modes = list[tuple[torch.nn.Module, bool]]


def module_modes(modules: Iterable[torch.nn.Module]) -> Modes:
    """Every module of ``modules`` and below, once each, with its mode now.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Dropout())
        >>> _ = net[1].eval()
        >>> [training for _, training in module_modes([net])]
        [True, True, False]
    """
    seen: dict[int, tuple[torch.nn.Module, bool]] = {}
    for top in modules:
        for module in top.modules():
            seen.setdefault(id(module), (module, module.training))
    return list(seen.values())


def restore_modes(modes: Modes) -> None:
    """Gives each module the mode :func:`module_modes` took (not recursively: each has its
    own entry)."""
    for module, training in modes:
        module.training = training


@contextlib.contextmanager
def evaluation_mode(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Runs the block with ``modules`` in eval mode, then gives every submodule its mode
    back.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Dropout())
        >>> _ = net[1].eval()
        >>> with evaluation_mode([net]):
        ...     print(net.training)
        False
        >>> net.training, net[1].training
        (True, False)
    """
    modules = list(modules)
    modes = module_modes(modules)
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        restore_modes(modes)
