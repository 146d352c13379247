"""Ops of a recorded program that TorchScript's tracer cannot take, called through scripted
functions while the program is traced (``torch.jit.trace`` records a call into a scripted
function like any op).

* The guard's ``_amp_foreach_non_finite_check_and_unscale_`` only mutates its arguments,
  and the tracer records no call without a tensor result.
* The backward ops of convolutions and of group, layer and batch norm take the gradients
  to compute as an ``output_mask`` of type ``bool[3]``, which the tracer refuses
  ("unsupported argument type"): every convolutional model's program ran as the plain
  recorded program. Their scripted stand-ins are written from each op's schema.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["traceable_ops"]

_AMP_CHECK = torch.ops.aten._amp_foreach_non_finite_check_and_unscale_.default


def _check(tensors: list[torch.Tensor], found: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, inv)
    return found  # the tracer records a call only for a tensor result


def _quiet_script(make: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is what "jit" runs on
        warnings.simplefilter("ignore", DeprecationWarning)
        return make()


@functools.cache
def _scripted_check() -> Any:
    return _quiet_script(lambda: torch.jit.script(_check))


def _check_through_script(*args: Any) -> torch.Tensor:
    return _scripted_check()(*args)


def _takes_output_mask(op: object) -> bool:
    """An aten op with a ``bool[N] output_mask`` and one tensor result per mask entry."""
    schema = getattr(op, "_schema", None)
    if schema is None or not schema.name.startswith("aten::"):
        return False
    mask = [a for a in schema.arguments if a.name == "output_mask"]
    returns = [str(r.type) for r in schema.returns]
    return len(mask) == 1 and str(mask[0].type) == "List[bool]" and set(returns) == {"Tensor"}


@functools.cache
def _scripted_masked(op: torch._ops.OpOverload) -> Any:
    """The compilation unit of a scripted function ``run`` with ``op``'s arguments that
    calls it and returns an empty tensor for each gradient the mask leaves out (an undefined
    tensor cannot leave TorchScript, and the program never reads it)."""
    schema = op._schema
    names = [f"a{i}" for i in range(len(schema.arguments))]
    mask = names[[a.name for a in schema.arguments].index("output_mask")]
    first = names[[str(a.type) for a in schema.arguments].index("Tensor")]
    results = ", ".join(f"out[{k}] if {mask}[{k}] else empty" for k in range(len(schema.returns)))
    params = ", ".join(f"{n}: {a.type}" for n, a in zip(names, schema.arguments))
    source = (
        f"def run({params}):\n"
        f"    out = torch.ops.aten.{schema.name.split('::')[1]}({', '.join(names)})\n"
        f"    empty = {first}.new_empty(0)\n"
        f"    return ({results},)\n"
    )
    return _quiet_script(lambda: torch.jit.CompilationUnit(source))  # holds ``run``


def _masked_through_script(op: torch._ops.OpOverload) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        return _scripted_masked(op).run(*args)

    return call


def _stand_in(node: torch.fx.Node) -> Callable[..., Any] | None:
    if node.op != "call_function":
        return None
    if node.target is _AMP_CHECK:
        return _check_through_script
    if not _takes_output_mask(node.target) or node.kwargs:
        return None
    every_argument = len(node.args) == len(node.target._schema.arguments)
    return _masked_through_script(node.target) if every_argument else None


@contextmanager
def traceable_ops(gm: torch.fx.GraphModule) -> Iterator[None]:
    """While open, ``gm`` calls the ops above through TorchScript (same arguments, same
    results where the program reads them).

    Example:
        >>> from torch.fx.experimental.proxy_tensor import make_fx
        >>> def step(x, w):
        ...     y = torch.nn.functional.conv1d(x, w)
        ...     return torch.autograd.grad(y.square().sum(), w)[0]
        >>> x, w = torch.randn(2, 1, 5), torch.randn(3, 1, 2, requires_grad=True)
        >>> gm = make_fx(step)(x, w)
        >>> with traceable_ops(gm):
        ...     traced = torch.jit.trace(gm, (x, w), check_trace=False)
        >>> torch.allclose(traced(x, w), step(x, w))
        True
    """
    swapped = [(n, n.target, s) for n in gm.graph.nodes if (s := _stand_in(n)) is not None]
    for node, _, stand_in in swapped:
        node.target = stand_in
    gm.recompile()
    try:
        yield
    finally:
        for node, target, _ in swapped:
            node.target = target
        gm.recompile()
