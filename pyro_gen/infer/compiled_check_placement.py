r"""The step guard's non-finite check of large gradients, moved next to where each is made.

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

A weight's gradient is a matrix product :math:`G = A B` of a batch's factors (output
gradients and inputs), which at small batches hold fewer elements than :math:`G`. Summing
such a :math:`G` right after the multiply costs as much as reading it from memory (measured:
+50 us for 400 x 784 at batch 128; the multiply's stores do not leave it in cache). There the
factors are read instead: by Cauchy-Schwarz :math:`|G_{ij}| \le \|A\|_F \|B\|_F`, and when
:math:`\|A\|_F^2 \|B\|_F^2` (two dot products, each taken where its factor is made, while
in cache) is finite, every :math:`|G_{ij}|` is below about 2e19 in float32, far from overflow
whatever the rounding. A NaN or infinity in a factor makes the bound NaN or infinite. The
bound can be infinite with :math:`G` finite (factors above about 1e19): a raised flag is
checked again exactly, as for a sum.
"""

from __future__ import annotations

import operator

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
# Matrix products whose result is bounded through its factors (the bound of the module's
# docstring holds for each matrix of a batched product, so for the whole batch).
_PRODUCTS = (aten.mm.default, aten.bmm.default)
# Where a squared norm that does not overflow leaves the product far from overflow (in half
# precision a squared norm overflows at 256, every step would be re-checked exactly).
_BOUNDED_DTYPES = (torch.float32, torch.float64)


def check_where_made(gm: torch.fx.GraphModule) -> int:
    """Replaces each large tensor of the recorded guard check by its sum, taken right after
    the node that computes the tensor; the small ones stay in the check at the end, as they
    are. A raised flag may then be an overflow: check again exactly before skipping a step.
    A large tensor made by a matrix product whose factors hold fewer elements is bounded
    through its factors instead (module docstring). Returns the number of large tensors so
    moved (0: none large, no guard check, or one this rewrite does not recognise, left as
    it was).

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
        if _numel(t) < _SUMMED_MIN_ELEMENTS or _memory_written(t):
            checked.append(t)  # small, or a later in-place op may still change it: as it is
        else:
            summed.setdefault(chain[-1], None)
    squares: dict[torch.fx.Node, torch.fx.Node] = {}
    position = {n: i for i, n in enumerate(graph.nodes)}
    for target in summed:
        bound = _product_bound(graph, target, squares, position)
        if bound is None:
            with graph.inserting_after(target):
                bound = graph.call_function(aten.sum.default, (target,))
        checked.append(bound)
    check.args = (checked, found, inv, *check.args[3:])
    graph.lint()
    gm.recompile()
    return len(summed)


def _product_bound(
    graph: torch.fx.Graph,
    product: torch.fx.Node,
    squares: dict[torch.fx.Node, torch.fx.Node],
    position: dict[torch.fx.Node, int],
) -> torch.fx.Node | None:
    """``dot(A, A) * dot(B, B)`` for ``product`` = ``A @ B``, or None where the factors hold
    more elements than the product (its sum reads less), are not float32 or float64, or
    are not laid out contiguously (reading them would copy). Each factor's dot product is
    taken while the factor is in cache: right after the node that makes it, or an input's
    after its first reader (unless written in place in between: then where the product reads
    it); ``squares`` keeps them for factors of several products, ``position`` is the order
    of the graph's nodes before any insertion."""
    if product.target not in _PRODUCTS:
        return None
    factors = [_contiguous_elements(a) for a in product.args[:2]]
    if any(f is None for f in factors) or sum(map(_numel, factors)) >= _numel(product):
        return None
    if not all(f.meta["val"].dtype in _BOUNDED_DTYPES for f in factors):
        return None
    for arg, f in zip(product.args[:2], factors):
        if f in squares:
            continue
        place = graph.inserting_before(product)  # where the product reads it: always right
        if not _memory_written(arg):  # the same values earlier
            if f.op != "placeholder":
                place = graph.inserting_after(f)
            elif (reader := _first_reader(f, position)) and position[reader] < position[product]:
                place = graph.inserting_after(reader)
        with place:
            flat = graph.call_function(aten.reshape.default, (f, [-1]))  # contiguous: a view
        with graph.inserting_after(flat):
            squares[f] = graph.call_function(aten.dot.default, (flat, flat))
    with graph.inserting_before(product):
        return graph.call_function(aten.mul.Tensor, tuple(squares[f] for f in factors))


def _first_reader(node: torch.fx.Node, position: dict[torch.fx.Node, int]) -> torch.fx.Node | None:
    """The first node that reads ``node``'s elements (not only a view of them), if any."""
    readers = [n for n in node.users if n.target not in _SAME_ELEMENTS]
    return min(readers, key=position.__getitem__) if readers else None


def _contiguous_elements(node: object) -> torch.fx.Node | None:
    """A node with exactly ``node``'s elements, laid out contiguously (``node`` itself, or
    what a transposed view of it was made from), or None."""
    while isinstance(node, torch.fx.Node):
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.is_contiguous():
            return node
        if node.op != "call_function" or node.target not in _SAME_ELEMENTS:
            return None
        node = node.args[0]
    return None


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


def _memory_written(node: torch.fx.Node) -> bool:
    """Whether some op writes into ``node``'s memory: into it, or into any tensor that shares
    it (the tensor it is a view of, and every view of that, found through the ops' alias
    annotations; a getitem of a list of views counts as a view)."""
    root = node
    while _aliases_first_argument(root):
        root = root.args[0]
    seen, todo = set(), [root]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if _written_in_place(n):
            return True
        todo += [u for u in n.users if _aliases_first_argument(u) and u.args[0] is n]
    return False


def _aliases_first_argument(node: torch.fx.Node) -> bool:
    """Whether ``node``'s result shares memory with its first argument (a view, or an item
    of a list of views)."""
    if node.op != "call_function" or not node.args or not isinstance(node.args[0], torch.fx.Node):
        return False
    if node.target is operator.getitem:
        return True  # conservatively: an item of a split, an unbind, ...
    schema = getattr(node.target, "_schema", None)
    if schema is None or not schema.arguments or not schema.returns:
        return False
    first = schema.arguments[0].alias_info
    out = schema.returns[0].alias_info
    return first is not None and not first.is_write and out is not None


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
