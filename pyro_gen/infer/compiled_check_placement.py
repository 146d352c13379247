"""The step guard's non-finite check, moved next to where each gradient is made.

The guard (:func:`~pyro_gen.infer.compiled_optim.guarded_loss`) records one
``_amp_foreach_non_finite_check_and_unscale_`` over the loss and every gradient at the end of
the program. By then the first gradients the backward pass wrote have left the cache, so on
the CPU the check is one more pass over the gradients in memory: at batch 128 about 5% of a
VAE step (benchmarks/RESULTS.md, step guard). Checked right after its producer, each
gradient is still in cache. The flag only ever goes from 0 to 1 and the check multiplies by
exactly 1, so splitting and moving it gives bitwise the same flag and gradients.

Where the flag is read on the host (the CPU), a large tensor's check can be its sum instead,
taken where it is made and checked at the end: NaN and infinities carry into a sum, and a sum
is one read where the check reads and writes (11 against 38 us for a 400 x 784 gradient in
cache). A sum of finite values can overflow, so the flag is then a candidate that the reader
checks again exactly before it skips the step.
"""

from __future__ import annotations

import torch

__all__ = ["check_where_made"]

aten = torch.ops.aten

_CHECK = aten._amp_foreach_non_finite_check_and_unscale_.default
# Ops whose result holds exactly the elements of their input (a view or copy-free alias): the
# check on the input checks the same numbers, and it is the input that was just written.
_SAME_ELEMENTS = (
    aten.t.default,
    aten.view.default,
    aten.reshape.default,
    aten.transpose.int,
    aten.permute.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.alias.default,
    aten.detach.default,
)
# A check of its own pays where the tensor would have left the cache by the end of the step;
# each call costs a few microseconds, more than a small tensor's pass (a RealNVP with 64
# hidden units, 25 small gradients, ran 10% slower with every gradient checked alone).
_OWN_CHECK_MIN_ELEMENTS = 1 << 16
# What the flag tensors are made with (guarded_loss: zeros, ones, then zero_).
_FLAG_MAKERS = (aten.zeros.default, aten.ones.default, aten.zero_.default, aten.fill_.Scalar)


def check_where_made(gm: torch.fx.GraphModule, summed: bool = False) -> int:
    """Gives each large tensor of the recorded guard check a check of its own, placed right
    after the node that computes it; the small ones stay in the check at the end. Returns
    the number of tensors moved (0: none large, no guard check, or one this rewrite does not
    recognise, left as it was).

    Args:
        gm: the recorded program, changed in place.
        summed: check each large tensor's sum, taken where it is made, in the check at the
            end (a raised flag may then be an overflow: check again exactly before skipping).

    Example:
        >>> from torch.fx.experimental.proxy_tensor import make_fx
        >>> from pyro_gen.infer.compiled_optim import non_finite
        >>> def step(x):
        ...     a, b = x.exp(), x[0].sin()
        ...     return a.sum() + b.sum(), non_finite([a, b])
        >>> gm = make_fx(step)(torch.ones(512, 512))
        >>> check_where_made(gm)  # a: 262,144 elements; b: 512, left in the end check
        1
        >>> x = torch.zeros(512, 512)
        >>> x[3, 4] = float("inf")
        >>> gm(x)[1]
        tensor(1.)
    """
    checks = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is _CHECK]
    if len(checks) != 1:
        return 0
    (check,) = checks
    tensors, found, inv = check.args[:3]
    makers = [*_made_from_nothing(found), *_made_from_nothing(inv)]
    if not makers or check.users or not all(isinstance(t, torch.fx.Node) for t in tensors):
        return 0
    graph = gm.graph
    first = next(n for n in graph.nodes if n.op not in ("placeholder", "get_attr"))
    for node in makers:  # the flag exists before the first tensor it checks
        if node is not first:
            first.prepend(node)
    moved, late = {}, []
    for t in dict.fromkeys(tensors):
        chain = _views_back_to_producer(t)
        if _numel(t) < _OWN_CHECK_MIN_ELEMENTS or any(_written_in_place(n) for n in chain):
            late.append(t)  # small, or a later in-place op may still change it: at the end
        else:
            moved.setdefault(chain[-1], None)
    for target in moved:
        with graph.inserting_after(target):
            if summed:
                late.append(graph.call_function(aten.sum.default, (target,)))
            else:
                graph.call_function(_CHECK, ([target], found, inv))
    if late:
        check.args = (late, found, inv, *check.args[3:])
    else:
        graph.erase_node(check)
    graph.lint()
    gm.recompile()
    return len(moved)


def _made_from_nothing(node: object) -> list[torch.fx.Node]:
    """``node`` and the nodes it is made from, first first, when those are only the flag
    makers of ``guarded_loss`` (no input tensor); else []."""
    chain = []
    while isinstance(node, torch.fx.Node):
        if node.op != "call_function" or node.target not in _FLAG_MAKERS:
            return []
        chain.append(node)
        node = node.args[0] if node.target in (aten.zero_.default, aten.fill_.Scalar) else None
    return chain[::-1]


def _numel(node: torch.fx.Node) -> int:
    val = node.meta.get("val")
    return val.numel() if isinstance(val, torch.Tensor) else 0


def _views_back_to_producer(node: torch.fx.Node) -> list[torch.fx.Node]:
    """``node``, then the inputs of the views with exactly its elements it was made through,
    ending at the node that wrote the elements (contiguous, and hot in cache)."""
    chain = [node]
    while (
        node.op == "call_function"
        and node.target in _SAME_ELEMENTS
        and isinstance(node.args[0], torch.fx.Node)
        and node.args[0].op == "call_function"
    ):
        node = node.args[0]
        chain.append(node)
    return chain


def _written_in_place(node: torch.fx.Node) -> bool:
    """Whether some op writes into ``node``'s tensor (an in-place or ``out=`` argument)."""
    for user in node.users:
        if user.op != "call_function" or user.target is _CHECK:
            continue  # the graph's output, or the guard's own check
        schema = getattr(user.target, "_schema", None)
        if schema is None:  # not an aten op: only operator.getitem, which reads
            continue
        for arg, value in zip(schema.arguments, user.args):
            if value is node and arg.alias_info is not None and arg.alias_info.is_write:
                return True
        for arg in schema.arguments:
            if user.kwargs.get(arg.name) is node and arg.alias_info and arg.alias_info.is_write:
                return True
    return False
