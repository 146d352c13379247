"""Recording a Pyro step as a tensor program: value guards, and random calls and captured
constants lifted out as program inputs (used by :mod:`pyro_gen.infer.compiled`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from pyro_gen.infer.compiled_checks import VALUE_READS, HeldBatch

# Allocation ops whose fresh buffer an in-place random op fills with standard noise.
_ALLOC_OPS = {
    torch.ops.aten.empty.memory_format,
    torch.ops.aten.empty_strided.default,
}


class _Unsupported(Exception):
    """The recorded program cannot stand for the model; the message says why."""


@dataclass
class _Noise:
    """One random call lifted out of the program, replayed as the same aten call."""

    op: Any
    args: tuple
    kwargs: dict
    alloc: Any = None
    alloc_args: tuple = ()
    alloc_kwargs: dict = field(default_factory=dict)

    def draw(self) -> torch.Tensor:
        if self.alloc is None:
            return self.op(*self.args, **self.kwargs)
        return self.op(self.alloc(*self.alloc_args, **self.alloc_kwargs), *self.args, **self.kwargs)


@dataclass
class _Program:
    fn: Callable[..., Any]
    gm: torch.fx.GraphModule
    params: list[torch.Tensor]
    grad_params: list[torch.Tensor]
    extras: list[_Noise | torch.Tensor]
    signature: tuple
    guards: list[Any]
    compiled: bool
    guarded: bool = False  # returns the step guard's non-finite flag after the gradients
    flag_on_device: bool = False  # the fused update reads it there (else the step reads it)
    checked: bool = False  # then returns the input checks' flag (1: a check failed)
    calls: int = 0
    # Rebuilds the step's (args, kwargs) from its data tensors, and the first batch whose
    # input checks failed on the device since the last read-back (accelerator path).
    rebuild: Callable[[Sequence[torch.Tensor]], tuple[tuple, dict]] | None = None
    held: HeldBatch = field(default_factory=HeldBatch)


def _integer_indexing(func: Any, args: tuple) -> bool:
    # Integer (not boolean-mask) indices give a result shape known from the shapes alone.
    if func.overloadpacket not in (torch.ops.aten.index, torch.ops.aten.index_put):
        return False
    indices = args[1]
    return all(i is None or i.dtype not in (torch.bool, torch.uint8) for i in indices)


class _GuardMode(TorchDispatchMode):
    """While recording, answers Python's reads of tensor values (``if x.max() > 1``,
    ``.item()``) with the real value and remembers the tensor read, so that the program
    can return it and each step can check that the branch taken is still the same."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[torch.Tensor, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in VALUE_READS:
            with _disable_current_modes():
                value = args[0].item()
            self.reads.append((args[0], value))
            return value
        if torch.Tag.dynamic_output_shape in func.tags and _integer_indexing(func, args):
            return func(*args, **kwargs)
        if torch.Tag.dynamic_output_shape in func.tags or (
            torch.Tag.data_dependent_output in func.tags
        ):
            raise _Unsupported(f"{func} has a data-dependent result shape or value")
        return func(*args, **kwargs)


def noise_devices(tensors: Sequence[torch.Tensor]) -> list[int]:
    """The CUDA devices whose generators a program's noise draws use (its inputs')."""
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


RngState = tuple[torch.Tensor, list[torch.Tensor]]


def noise_rng_state(devices: Sequence[int]) -> RngState:
    """The state of the generators the lifted noise draws from (torch's CPU generator and
    those of ``devices``), to give back a step that does not count."""
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def set_noise_rng_state(
    state: tuple[torch.Tensor, list[torch.Tensor]], devices: Sequence[int]
) -> None:
    """Restores what :func:`noise_rng_state` returned."""
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for d, s in zip(devices, cuda):
        torch.cuda.set_rng_state(s, d)


# ---------------------------------------------------------------------------------------
# Graph surgery: random calls and captured constants become inputs.


# Random ops on a tensor's shape alone, and the op that draws the same from a shape.
_LIKE = {
    torch.ops.aten.randn_like.default: torch.ops.aten.randn.default,
    torch.ops.aten.rand_like.default: torch.ops.aten.rand.default,
}


def _fresh_like(buf: torch.fx.Node) -> tuple[Any, tuple, dict] | None:
    """``empty(shape, dtype, device)`` standing for ``buf`` = ``empty_like(x)`` of a
    contiguous ``x`` (as ``(op, args, kwargs)``), or None."""
    if buf.target is not torch.ops.aten.empty_like.default or len(buf.args) != 1:
        return None
    val = buf.meta.get("val")
    if not torch.is_tensor(val) or not val.is_contiguous():
        return None
    kwargs = {"dtype": val.dtype, "device": val.device}
    return torch.ops.aten.empty.memory_format, (list(val.shape),), kwargs


def _lift_inputs(gm: torch.fx.GraphModule) -> list[_Noise | torch.Tensor]:
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    # New inputs go after the last input, not before the first other node: that node may be
    # the next one lifted and erased, and inserting before an erased node corrupts the graph.
    last = [placeholders[-1] if placeholders else None]
    extras: list[_Noise | torch.Tensor] = []
    # A tensor captured in several places (make_fx gives each use its own get_attr) is one
    # input: the program's in-place writes to it (the guard's flag) reach every use, and
    # whoever passes the inputs, copies included, passes it once.
    lifted: dict[int, torch.fx.Node] = {}

    def new_input(node: torch.fx.Node, extra: _Noise | torch.Tensor) -> None:
        if torch.is_tensor(extra) and id(extra) in lifted:
            node.replace_all_uses_with(lifted[id(extra)])
            graph.erase_node(node)
            return
        place = last[0]
        where = graph.inserting_after(place) if place else graph.inserting_before(node)
        with where:
            ph = graph.placeholder(f"extra_{len(extras)}")
        last[0] = ph
        node.replace_all_uses_with(ph)
        graph.erase_node(node)
        extras.append(extra)
        if torch.is_tensor(extra):
            lifted[id(extra)] = ph

    def constant(x: Any) -> bool:
        return not any(isinstance(a, torch.fx.Node) for a in pytree.tree_leaves(x))

    for node in list(graph.nodes):
        if node.op == "get_attr":
            value = getattr(gm, node.target)
            if torch.is_tensor(value):
                # Captured tensors (buffers, constants) are passed in, not frozen.
                new_input(node, value)
            continue
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if torch.Tag.nondeterministic_seeded not in node.target.tags:
            continue
        schema_args = node.target._schema.arguments
        inplace = bool(schema_args) and schema_args[0].alias_info is not None
        if inplace:
            buf = node.args[0]
            fresh = isinstance(buf, torch.fx.Node) and len(buf.users) == 1
            if (
                fresh
                and buf.target in _ALLOC_OPS
                and constant((buf.args, buf.kwargs, node.args[1:], node.kwargs))
            ):
                noise = _Noise(
                    node.target, tuple(node.args[1:]), dict(node.kwargs), buf.target,
                    tuple(buf.args), dict(buf.kwargs),
                )  # fmt: skip
                new_input(node, noise)
                graph.erase_node(buf)
                continue
            alloc = _fresh_like(buf) if fresh else None
            if alloc is not None and constant((node.args[1:], node.kwargs)):
                # Dropout's mask: bernoulli_ into empty_like(x), which reads only x's shape,
                # dtype and device, fixed in a recording (the same draw into empty(shape)).
                noise = _Noise(
                    node.target, tuple(node.args[1:]), dict(node.kwargs), *alloc
                )  # fmt: skip
                new_input(node, noise)
                graph.erase_node(buf)
                continue
        elif constant((node.args, node.kwargs)):
            new_input(node, _Noise(node.target, tuple(node.args), dict(node.kwargs)))
            continue
        elif node.target in _LIKE and constant((node.args[1:], node.kwargs)):
            # randn_like(x) reads only x's shape, dtype and device, fixed in a recording:
            # the same draw as randn(shape) from the same generator.
            val = node.meta.get("val")
            if torch.is_tensor(val) and val.is_contiguous():
                like = {"dtype": val.dtype, "device": val.device}
                new_input(node, _Noise(_LIKE[node.target], (list(val.shape),), like))
                continue
        raise _Unsupported(
            f"random op {node.target} depends on traced values (a sampler that is not "
            "standard noise pushed through differentiable ops, e.g. Gamma or discrete)"
        )
    graph.lint()
    gm.recompile()
    return extras
