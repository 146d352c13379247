"""The recorded program's rewrites: fewer passes over large tensors, bitwise the same values."""

from __future__ import annotations

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_gen.infer.compiled_passes import simplify


def _ops(gm: torch.fx.GraphModule) -> list[str]:
    return [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]


def _likelihood_and_its_gradient(logits, x, g):
    # what a Bernoulli log_prob, its event sum and autograd's broadcast gradient record
    log_p = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
    total = log_p.view(logits.shape[0], -1).sum(-1).sum()
    grad = -(g.expand(logits.shape[0]).unsqueeze(-1).expand(logits.shape))
    return total, grad * (torch.sigmoid(logits) - x), (-x).exp()


def test_negations_move_past_sums_and_broadcasts_with_bitwise_equal_results():
    args = (torch.randn(64, 50), torch.rand(64, 50).round(), torch.randn(()))
    gm = make_fx(_likelihood_and_its_gradient)(*args)
    before = gm(*args)
    assert simplify(gm) == 3  # the event sum, the batch sum, the broadcast gradient
    after = gm(*args)
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    negated = [
        n.args[0]
        for n in gm.graph.nodes
        if n.op == "call_function" and n.target is torch.ops.aten.neg.default
    ]
    # the negations act on the scalar sum, on the scalar gradient g before its broadcast,
    # and on x itself (its negation feeds exp at full size): none on a broadcast copy
    assert sorted(n.name for n in negated if n.op == "placeholder") == ["g_1", "x_1"]
    assert [n.target for n in negated if n.op != "placeholder"] == [torch.ops.aten.sum.default]


def test_a_negation_that_is_needed_at_full_size_stays():
    def f(x):
        n = -x
        return n.sum(), n * 2

    gm = make_fx(f)(torch.ones(4))
    assert simplify(gm) == 0
