"""A flow transform's cached input, output and log-det, and when they are stale.

Torch's ``cache_size=1`` compares inputs by identity only; here a cached triple also records
the parameters it was computed with (their objects and version counters), grad mode and jit
tracing, so that an optimizer step, a parameter swapped in by ``pyro.module``, or a move to
another mode makes it stale (used by :class:`pyro_gen.transforms._base.FlowTransformModule`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import torch


class _LadjCache:
    """Holds the last (x, y, log|det J|) triple and the :func:`parameter_stamp` it was made under.

    Dropped on deepcopy/pickle, because tensors that carry autograd history cannot be
    deep-copied (copying a model for EMA or checkpointing must not fail).
    """

    __slots__ = ("x", "y", "x_version", "y_version", "ladj", "owners", "names", "params", "stamp")

    def __init__(self) -> None:
        self.clear()

    def valid(self) -> bool:
        """The stamp still holds and every parameter slot still holds the object it was made
        with (a lookup costs a few dict and version reads, not a module walk).

        Objects are compared, not only versions: ``pyro.module(name, m,
        update_module_params=True)`` swaps new parameters into the module's ``_parameters``
        dicts, leaving the old objects (and their versions) as they were.
        """
        current = list(map(_GETITEM, self.owners, self.names))
        return self.stamp == parameter_stamp(current) and all(
            map(operator.is_, current, self.params)
        )

    def holds(self, x: torch.Tensor | None, y: torch.Tensor | None) -> bool:
        """Whether the cached pair is valid for these tensors (``None``: not compared): the
        same objects, not written in place since (a buffer reused for every batch with
        ``copy_``, Langevin steps updating ``x``), under a stamp that still holds."""
        return (
            (x is None or (x is self.x and _version_of(x) == self.x_version))
            and (y is None or (y is self.y and _version_of(y) == self.y_version))
            and self.valid()
        )

    def __deepcopy__(self, memo: dict) -> _LadjCache:
        return _LadjCache()

    def __reduce__(self) -> tuple:
        return (_LadjCache, ())

    def clear(self) -> None:
        self.x = self.y = self.x_version = self.y_version = self.ladj = self.stamp = None
        self.owners, self.names, self.params = [], [], []


_VERSION = operator.attrgetter("_version")
_GETITEM = dict.__getitem__


def _version_of(x: torch.Tensor) -> int | None:
    """``x``'s in-place write counter; ``None`` for an inference tensor, which has none (its
    cache hits are by identity alone, as torch's)."""
    return None if x.is_inference() else x._version


_tracing = torch._C._get_tracing_state


def parameter_stamp(params: Sequence[torch.Tensor]) -> tuple:
    """What a cached result depends on besides its input: grad mode, whether a jit trace is
    recording, and parameter versions.

    An optimizer step changes parameters in place (bumping their version counters), so a
    result cached before the step is stale after it, and one computed under ``no_grad``
    carries no graph. Torch's ``cache_size=1`` compares inputs by identity only, which
    returns the previous step's output (and its freed graph) whenever a density flow scores
    the same data tensor twice, as an SVI loop over one fixed batch does.
    """
    # map with a C getter: no generator frame per parameter (it runs several times a step).
    # Whether a jit trace is recording: a value cached outside a trace is not the trace's
    # (Pyro's JitTrace_ELBO runs the model once eagerly, then traces it with the same data).
    return (torch.is_grad_enabled(), _tracing(), *map(_VERSION, params))


def parameter_slots(module: torch.nn.Module, owners: list[dict], names: list[str]) -> None:
    """Appends where each of the module's parameters lives (its ``_parameters`` dict and key),
    so that a cache lookup reads the current objects without a module walk, and sees one
    swapped in by ``pyro.module(..., update_module_params=True)``. No ``parameters()``
    generator or de-duplication: the walk runs on every real computation of a small flow
    layer, and it cost a few percent of an IAF step. Duplicates are harmless for stamps."""
    owned = module._parameters
    for name, p in owned.items():
        if p is not None:
            owners.append(owned)
            names.append(name)
    for child in module._modules.values():
        if child is not None:
            parameter_slots(child, owners, names)


def partial_module(fn: object) -> tuple[torch.nn.Module, ...]:
    """``(module,)`` when ``fn`` is a ``functools.partial`` of a module, else ``()``."""
    if isinstance(fn, functools.partial) and isinstance(fn.func, torch.nn.Module):
        return (fn.func,)
    return ()
