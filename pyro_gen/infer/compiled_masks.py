"""A rewrite of the recorded ELBO program that keeps a CUDA step from waiting for the host.

``x[mask] = v`` with a boolean ``mask`` records as ``index_put_(x, [mask], v)``. On CUDA
that op counts the mask's true elements on the host first (a ``nonzero``), so every step
waits for the device. ``torch.distributions`` writes such lines: the KL divergence of two
``Uniform`` distributions sets ``inf`` where the supports do not nest, and a DDPM's
time-step site meets it in every ``TraceMeanField_ELBO`` step. When the mask has ``x``'s
shape and ``v`` is one value, the assignment is ``masked_fill(x, mask, v)``: the same
elements, computed without knowing how many there are.
"""

from __future__ import annotations

import torch

__all__ = ["fill_masked_assignments"]

aten = torch.ops.aten

_ASSIGNMENTS = (aten.index_put_.default, aten.index_put.default)


def fill_masked_assignments(gm: torch.fx.GraphModule) -> int:
    """Rewrites ``gm`` in place; returns the number of assignments rewritten.

    Example:
        >>> from torch.fx.experimental.proxy_tensor import make_fx
        >>> def kl_like(x):
        ...     out = x.log()
        ...     out[x > 1] = float("inf")
        ...     return out
        >>> gm = make_fx(kl_like)(torch.rand(3))
        >>> fill_masked_assignments(gm)
        1
        >>> gm(torch.tensor([0.5, 2.0, 1.0]))
        tensor([-0.6931,     inf,  0.0000])
    """
    count = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _ASSIGNMENTS and _is_fill(node):
            target, (mask,), value = node.args[:3]
            with gm.graph.inserting_before(node):
                fill = gm.graph.call_function(aten.masked_fill.Tensor, (target, mask, value))
            fill.meta.update(node.meta)
            node.replace_all_uses_with(fill)
            gm.graph.erase_node(node)
            count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _is_fill(node: torch.fx.Node) -> bool:
    """An assignment of one value through one boolean mask of the target's own shape, to a
    tensor that nothing else reads (an in-place write to anything else must stay one)."""
    if len(node.args) < 3 or (len(node.args) > 3 and node.args[3]):  # accumulate=True
        return False
    target, indices, value = node.args[:3]
    if not (isinstance(indices, (list, tuple)) and len(indices) == 1):
        return False
    vals = [_val(n) for n in (target, indices[0], value)]
    if any(v is None for v in vals):
        return False
    x, mask, v = vals
    if mask.dtype != torch.bool or mask.shape != x.shape or v.dim() != 0 or v.dtype != x.dtype:
        return False
    if node.target is aten.index_put_.default:
        # in place: the rewrite is exact only where the written tensor is a fresh result
        # read by this assignment alone (not an input, a view or a tensor used again)
        if target.op != "call_function" or len(target.users) != 1:
            return False
        schema = getattr(target.target, "_schema", None)
        if schema is None or any(r.alias_info is not None for r in schema.returns):
            return False
    return True


def _val(node: object) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None
