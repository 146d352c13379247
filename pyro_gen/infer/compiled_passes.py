"""Exact rewrites of the recorded ELBO program that remove whole passes over large tensors.

``torch.distributions`` writes log-densities element by element and the ELBO sums them
afterwards: a Bernoulli likelihood is ``-binary_cross_entropy_with_logits(logits, x)``
(a negation over every pixel), then a sum. In the backward pass, autograd broadcasts the
scalar upstream gradient to the full image size and negates the broadcast copy. Written
by hand, one sums first and negates the sum. Inductor fuses such passes away; TorchScript
on the CPU runs each one, at 1024 x 784 about as long as a small matrix product.

The rewrites only move a negation: ``sum(-x) -> -sum(x)`` and ``-(broadcast x) ->
broadcast(-x)``. Negation is exact in floating point and the summation order does not
change, so the rewritten program gives bitwise the same results.

A recording also holds ops whose results nothing reads: Python evaluates the initial value
of ``pyro.param("w", torch.zeros(...))`` on every call although the store already holds
``w``, and a plate makes subsample indices that a full-batch model never uses. Neither the
plain recorded program nor TorchScript's unoptimized executor drops them, so
:func:`drop_unused` does (about 20 us a VAE step on the CPU).
"""

from __future__ import annotations

import torch

__all__ = ["drop_unused", "simplify"]

aten = torch.ops.aten

_SUMS = (aten.sum.default, aten.sum.dim_IntList)
# Ops that only re-index their input: a pointwise op commutes with them.
_VIEWS = (aten.expand.default, aten.view.default, aten.unsqueeze.default, aten.reshape.default)


def simplify(gm: torch.fx.GraphModule) -> int:
    """Applies the rewrites to ``gm`` in place.

    Returns:
        the number of rewrites made.

    Example:
        >>> from torch.fx.experimental.proxy_tensor import make_fx
        >>> gm = make_fx(lambda x: torch.neg(x).sum())(torch.ones(3))
        >>> simplify(gm), [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]
        (1, ['sum.default', 'neg.default'])
    """
    count = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _SUMS:
            count += _sum_of_negation(gm.graph, node)
        elif node.op == "call_function" and node.target is aten.neg.default:
            count += _negation_of_broadcast(gm.graph, node)
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _sum_of_negation(graph: torch.fx.Graph, total: torch.fx.Node) -> int:
    neg = total.args[0]  # through views (e.g. the reshape to the event's shape)
    while isinstance(neg, torch.fx.Node) and neg.target in _VIEWS and len(neg.users) == 1:
        neg = neg.args[0]
    if not (isinstance(neg, torch.fx.Node) and neg.target is aten.neg.default):
        return 0
    if len(neg.users) != 1:  # the negated tensor is needed elsewhere: keep it
        return 0
    neg.replace_all_uses_with(neg.args[0])
    graph.erase_node(neg)
    with graph.inserting_after(total):
        negated = graph.call_function(aten.neg.default, (total,))
    total.replace_all_uses_with(negated, delete_user_cb=lambda user: user is not negated)
    return 1


def _negation_of_broadcast(graph: torch.fx.Graph, neg: torch.fx.Node) -> int:
    chain: list[torch.fx.Node] = []  # view ops from neg's input back to their source
    source = neg.args[0]
    while isinstance(source, torch.fx.Node) and source.target in _VIEWS:
        chain.append(source)
        source = source.args[0]
    if not any(n.target is aten.expand.default for n in chain):
        return 0  # no broadcast: negating before or after costs the same
    with graph.inserting_before(neg):
        out = graph.call_function(aten.neg.default, (source,))
        for view in reversed(chain):
            out = graph.call_function(view.target, (out, *view.args[1:]), view.kwargs)
    neg.replace_all_uses_with(out)
    graph.erase_node(neg)
    for view in chain:  # the original views, once nothing else reads them
        if not view.users:
            graph.erase_node(view)
    return 1


def drop_unused(gm: torch.fx.GraphModule) -> int:
    """Removes the ops of ``gm`` whose results nothing reads, in place, and returns how many.
    Ops that write into a tensor or draw random numbers stay (FX counts them impure): the
    results and the random stream are as before.

    Example:
        >>> from torch.fx.experimental.proxy_tensor import make_fx
        >>> def step(x):
        ...     torch.zeros(3)  # as pyro.param's initial value, evaluated and dropped
        ...     return x * 2
        >>> gm = make_fx(step)(torch.ones(3))
        >>> drop_unused(gm), [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]
        (1, ['mul.Tensor'])
    """
    before = len(gm.graph.nodes)
    if gm.graph.eliminate_dead_code():
        gm.recompile()
    return before - len(gm.graph.nodes)
