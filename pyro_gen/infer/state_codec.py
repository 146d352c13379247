"""Turning training state into plain data that loads without running code, and back.

A checkpoint is read with ``torch.load(weights_only=True)``, whose unpickler accepts only
tensors, numbers, strings, bytes, ``None``, lists, tuples, dicts and a few torch types
(``torch.Size``, dtypes, devices). Two things in a run's state are none of these:

* numpy arrays (the numpy RNG state inside :func:`pyro.util.get_rng_state`), stored as a
  tagged dict with the array's dtype, shape and values as a tensor or list;
* Pyro parameter constraints, stored by the name they have in
  :mod:`torch.distributions.constraints` or :mod:`pyro.distributions.constraints`
  (``"positive"``, or ``"interval"`` with its bounds), and rebuilt by looking that name up
  there, never by importing anything named in the file.

Anything else is refused when the checkpoint is *written*, naming where it was found, so a
run never produces a checkpoint it cannot read back.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any

import numpy as np
import pyro.distributions.constraints as pyro_constraints
import torch
import torch.distributions.constraints as torch_constraints

_TAG = "__pyro_gen__"
_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.Size, torch.dtype, torch.device)
# Pyro's module re-exports torch's constraints and adds its own.
_CONSTRAINT_MODULES = (torch_constraints, pyro_constraints)


class UnsafeStateError(TypeError):
    """A value in the training state cannot be stored in a code-free checkpoint."""


def encode(value: Any, where: str = "state") -> Any:
    """``value`` as plain data that ``torch.load(weights_only=True)`` reads back.

    Example:
        >>> import numpy as np
        >>> decode(encode(("MT19937", np.arange(3, dtype=np.uint32))))[1].dtype
        dtype('uint32')
    """
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return {_TAG: "ndarray", "dtype": value.dtype.str, "shape": list(value.shape),
                "values": value.ravel().tolist()}  # fmt: skip
    if isinstance(value, np.generic):
        return {_TAG: "numpy_scalar", "dtype": value.dtype.str, "value": value.item()}
    if isinstance(value, torch_constraints.Constraint):
        return encode_constraint(value, where)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        items = [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return type(value)(items) if type(value) in (list, tuple) else items
    if isinstance(value, dict):
        if _TAG in value:
            raise UnsafeStateError(f"{where} uses the reserved key {_TAG!r}")
        items = ((k, encode(v, f"{where}[{k!r}]")) for k, v in value.items())
        return OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
    raise UnsafeStateError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a checkpoint "
        "cannot store without pickling code; keep tensors, numbers, strings, lists and dicts there"
    )


def decode(value: Any) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(value, dict):
        tag = value.get(_TAG)
        if tag == "ndarray":
            return np.asarray(value["values"], dtype=np.dtype(value["dtype"])).reshape(
                value["shape"]
            )
        if tag == "numpy_scalar":
            return np.dtype(value["dtype"]).type(value["value"])
        if tag == "constraint":
            return decode_constraint(value)
        items = ((k, decode(v)) for k, v in value.items())
        return OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(decode(v) for v in value)
    return value


def encode_constraint(constraint: torch_constraints.Constraint, where: str = "constraint") -> Any:
    """A constraint as its public name in Pyro's or torch's constraints module, plus the
    arguments it was built with.

    Example:
        >>> encode_constraint(torch_constraints.positive)["name"]
        'positive'
        >>> decode_constraint(encode_constraint(torch_constraints.interval(0.0, 2.0))).upper_bound
        2.0
    """
    for module in _CONSTRAINT_MODULES:
        for name, obj in vars(module).items():
            if obj is constraint and not name.startswith("_"):
                return {_TAG: "constraint", "name": name, "args": []}
    for module in _CONSTRAINT_MODULES:
        for name, obj in vars(module).items():
            if obj is type(constraint) and not name.startswith("_"):
                params = list(inspect.signature(obj.__init__).parameters)[1:]
                if all(hasattr(constraint, p) for p in params):
                    args = [encode(getattr(constraint, p), f"{where}.{p}") for p in params]
                    return {_TAG: "constraint", "name": name, "args": args}
    raise UnsafeStateError(
        f"{where} is a {type(constraint).__qualname__}, not one of the constraints in "
        "torch.distributions.constraints or pyro.distributions.constraints, so a checkpoint "
        "cannot record it by name; use a standard constraint for this parameter"
    )


def same_constraint(a: torch_constraints.Constraint, b: torch_constraints.Constraint) -> bool:
    """Whether two constraints are the same one with the same arguments; bounds may be
    tensors (``interval(low, high)`` per element), compared by value.

    Example:
        >>> same_constraint(torch_constraints.greater_than(torch.zeros(2)),
        ...                 torch_constraints.greater_than(torch.zeros(2)))
        True
        >>> same_constraint(torch_constraints.positive, torch_constraints.interval(0.0, 1.0))
        False
    """
    return _same(encode_constraint(a), encode_constraint(b))


def _same(a: Any, b: Any) -> bool:
    # == on dicts holding tensors asks a tensor of several elements for its truth value
    if torch.is_tensor(a) or torch.is_tensor(b):
        return (
            torch.is_tensor(a)
            and torch.is_tensor(b)
            and a.shape == b.shape
            and torch.equal(a.cpu(), b.cpu())
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def decode_constraint(value: dict[str, Any]) -> torch_constraints.Constraint:
    """Rebuilds a constraint recorded by :func:`encode_constraint`."""
    name = value["name"]
    for module in _CONSTRAINT_MODULES:
        obj = vars(module).get(name)
        if name.startswith("_") or obj is None:
            continue
        if isinstance(obj, torch_constraints.Constraint) and not value["args"]:
            return obj
        if isinstance(obj, type) and issubclass(obj, torch_constraints.Constraint):
            return obj(*(decode(a) for a in value["args"]))
    raise UnsafeStateError(f"unknown constraint {name!r} in the checkpoint")
