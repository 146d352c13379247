"""A flow transform's cached input, output and log-det, and when they are stale.

Torch's ``cache_size=1`` compares inputs by identity only; here a cached triple also records
the parameters it was computed with (their objects and version counters), grad mode and jit
tracing, so that an optimizer step, a parameter swapped in by ``pyro.module``, or a move to
another mode makes it stale (used by :class:`pyro_gen.transforms._base.FlowTransformModule`).

Writes that bypass version counters stay invisible: a parameter changed through ``p.data``
(``p.data.add_(...)``, a hand-written SGD step) or by a fused optimizer
(``torch.optim.Adam(..., fused=True)``, whose kernel leaves the counters as they were) leaves
a cached result valid. Write under ``torch.no_grad()`` instead (``p.add_(...)``), call
``torch.autograd.graph.increment_version(params)`` after such a step, or the transform's
``clear_cache()``. (``fit``'s own fused update, which Pyro's SVI also takes after ``fit`` on
the same optimizer, bumps them.)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import operator
import weakref
from collections.abc import Sequence

import torch


class _LadjCache:
    """Holds the last (x, y, log|det J|) triple and the :func:`parameter_stamp` it was made under.

    Dropped on deepcopy/pickle, because tensors that carry autograd history cannot be
    deep-copied (copying a model for EMA or checkpointing must not fail).
    """

    __slots__ = (
        "x", "y", "x_version", "y_version", "ladj", "owners", "names", "params", "stamp",
        "tree_epoch", "tree_dicts", "tree_sizes",
    )  # fmt: skip

    def __init__(self) -> None:
        self.clear()

    def valid(self) -> bool:
        """The module tree has the structure it was walked with (:meth:`same_tree`), every
        parameter slot still holds the object it was made with, and the stamp still holds (a
        lookup costs a few dict and version reads, not a module walk).

        Objects are compared, not only versions: ``pyro.module(name, m,
        update_module_params=True)`` swaps new parameters into the module's ``_parameters``
        dicts, leaving the old objects (and their versions) as they were.
        """
        params = self.params
        return (
            self.same_tree()
            and all(map(operator.is_, map(_GETITEM, self.owners, self.names), params))
            and self.stamp == parameter_stamp(params)
        )

    def same_tree(self) -> bool:
        """No parameter or submodule was registered on a walked module since the walk
        (torch's global registration hooks), and no ``_parameters``/``_modules`` dict of the
        tree gained or lost an entry (``ModuleList.insert`` writes its dict directly)."""
        return (
            self.tree_epoch == _STRUCTURE[0] and list(map(len, self.tree_dicts)) == self.tree_sizes
        )

    def locate(self, modules: Sequence[torch.nn.Module]) -> tuple:
        """Sets ``owners``, ``names`` and ``params`` to where the parameters of ``modules``
        (and their submodules) live and what they hold now; returns their
        :func:`parameter_stamp`. The modules are walked again only when the tree may have
        changed (:meth:`same_tree`) or a slot was emptied (``m.bias = None``): the walk cost
        about 5 us per layer and computation, a third of a 2-layer IAF guide's overhead over
        Pyro's."""
        if self.same_tree():
            try:
                self.params = list(map(_GETITEM, self.owners, self.names))
                return parameter_stamp(self.params)
            except (KeyError, AttributeError):  # a slot removed or set to None: walk again
                pass
        owners: list[dict] = []
        names: list[str] = []
        dicts: list[dict] = []
        for module in modules:
            parameter_slots(module, owners, names, dicts)
        self.owners, self.names, self.tree_dicts = owners, names, dicts
        self.tree_sizes = list(map(len, dicts))
        self.tree_epoch = _STRUCTURE[0]
        self.params = list(map(_GETITEM, owners, names))
        return parameter_stamp(self.params)

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
        self.tree_epoch, self.tree_dicts, self.tree_sizes = None, [], []


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


def parameter_slots(
    module: torch.nn.Module, owners: list[dict], names: list[str], dicts: list[dict]
) -> None:
    """Appends where each of the module's parameters lives (its ``_parameters`` dict and key),
    so that a cache lookup reads the current objects without a module walk, and sees one
    swapped in by ``pyro.module(..., update_module_params=True)``; ``dicts`` gets every
    ``_parameters`` and ``_modules`` dict of the tree (:meth:`_LadjCache.same_tree` watches
    their sizes). No ``parameters()`` generator or de-duplication: duplicates are harmless."""
    owned, children = module._parameters, module._modules
    if module not in _WATCHED:
        _WATCHED.add(module)
    dicts.append(owned)
    dicts.append(children)
    for name, p in owned.items():
        if p is not None:
            owners.append(owned)
            names.append(name)
    for child in children.values():
        if child is not None:
            parameter_slots(child, owners, names, dicts)


# Bumped whenever a parameter or submodule is registered on a module that some cache has
# walked (torch calls its global registration hooks from register_parameter, add_module and
# attribute assignment): a tree walked before may hold new parameters. Registrations on other
# modules do not count: torchdiffeq builds modules inside every ODE solve, and a global count
# made each solve drop every flow's cached result. A one-element list the hook writes.
_STRUCTURE = [0]
_WATCHED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def _structure_changed(module: torch.nn.Module, *_: object) -> None:
    if module in _WATCHED:
        _STRUCTURE[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_structure_changed)
torch.nn.modules.module.register_module_module_registration_hook(_structure_changed)


def conditioner_modules(fn: object) -> tuple[torch.nn.Module, ...]:
    """The modules whose parameters a conditioner that is no module itself computes with: the
    module of a ``functools.partial`` (a conditional layer's network with its context) or of a
    bound method (``net.forward``), and the modules a function closes over or names as
    globals (``lambda h: net(h)``). Their versions join the cache stamp: otherwise an
    optimizer step on ``net`` left a density flow's cached result of the last step valid,
    and scoring the same data tensor again failed with "Trying to backward through the
    graph a second time". Runs once, when a transform is built.

    Example:
        >>> net = torch.nn.Linear(2, 4)
        >>> [conditioner_modules(f) == (net,) for f in (net.forward, lambda h: net(h))]
        [True, True]
        >>> conditioner_modules(net)  # a module conditioner is a submodule, walked anyway
        ()
    """
    if isinstance(fn, torch.nn.Module):
        return ()
    if isinstance(fn, functools.partial):
        refs = [fn.func, *fn.args, *fn.keywords.values()]
    elif inspect.ismethod(fn):
        refs = [fn.__self__]
    elif inspect.isfunction(fn):
        refs = []
        for cell in fn.__closure__ or ():
            with contextlib.suppress(ValueError):  # a cell not yet assigned
                refs.append(cell.cell_contents)
        refs += [fn.__globals__[n] for n in fn.__code__.co_names if n in fn.__globals__]
    else:
        return ()
    return tuple(dict.fromkeys(r for r in refs if isinstance(r, torch.nn.Module)))
