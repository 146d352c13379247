"""The step guard's non-finite check of large gradients, moved next to where each is made.

The guard (:func:`~pyro_gen.infer.compiled_optim.non_finite`) records one
``_amp_foreach_non_finite_check_and_unscale_`` over the loss and every gradient at the end of
the program. By then the first gradients the backward pass wrote have left the cache, so on
the CPU the check is one more pass over the gradients in memory: at batch 128 about 5% of a
VAE step (benchmarks/RESULTS.md, step guard). Here each large gradient is summed right after
the node that makes it, while it is in cache, and the end check reads the sum instead:
NaN and infinities carry into a sum, and a sum is one read where the check reads and writes
(11 against 38 us for a 400 x 784 gradient in cache). A sum of finite values can overflow,
so a raised flag is a candidate that its reader checks again exactly before it skips the
step; :class:`~pyro_gen.infer.compiled_update.GuardedUpdate` does, where the CPU reads the
flag. (On an accelerator the fused update reads the flag on the device, with no second
look, and the cache holds the gradients anyway: the check stays as recorded.)
"""

from __future__ import annotations

import torch

__all__ = ["check_where_made"]

aten = torch.ops.aten

_CHECK = aten._amp_foreach_non_finite_check_and_unscale_.default
# Ops whose result holds exactly the elements of their input (a view or copy-free alias): the
# sum of the input sums the same numbers, and it is the input that was just written.
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
# A sum of its own pays where the tensor would leave the cache before the end of the step;
# each op costs a few microseconds, more than a small tensor's pass (a RealNVP with 64 hidden
# units, 25 small gradients, ran 10% slower with each gradient checked on its own).
_SUMMED_MIN_ELEMENTS = 1 << 16


def check_where_made(gm: torch.fx.GraphModule) -> int:
    """Replaces each large tensor of the recorded guard check by its sum, taken right after
    the node that computes the tensor; the small ones stay in the check at the end, as they
    are. A raised flag may then be an overflow: check again exactly before skipping a step.
    Returns the number of tensors summed (0: none large, no guard check, or one this rewrite
    does not recognise, left as it was).

    Example:
        >>> from torch.fx.experimental.proxy_tensor import make_fx
        >>> from pyro_gen.infer.compiled_optim import non_finite
        >>> def step(x):
        ...     a, b = x.exp(), x[0].sin()
        ...     return a.sum() + b.sum(), non_finite([a, b])
        >>> gm = make_fx(step)(torch.ones(512, 512))
        >>> check_where_made(gm)  # a: 262,144 elements, summed; b: 512, checked as it is
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
    if check.users or not all(isinstance(t, torch.fx.Node) for t in tensors):
        return 0
    graph = gm.graph
    summed, checked = {}, []
    for t in dict.fromkeys(tensors):
        chain = _views_back_to_producer(t)
        if _numel(t) < _SUMMED_MIN_ELEMENTS or any(_written_in_place(n) for n in chain):
            checked.append(t)  # small, or a later in-place op may still change it: as it is
        else:
            summed.setdefault(chain[-1], None)
    for target in summed:
        with graph.inserting_after(target):
            checked.append(graph.call_function(aten.sum.default, (target,)))
    check.args = (checked, found, inv, *check.args[3:])
    graph.lint()
    gm.recompile()
    return len(summed)


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
