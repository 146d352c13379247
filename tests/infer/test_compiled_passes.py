"""The recorded program's rewrites: fewer passes over large tensors, bitwise the same values,
and no op whose result nothing reads."""

from __future__ import annotations

import pyro
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_gen.infer.compiled import CompiledSVI
from pyro_gen.infer.compiled_passes import drop_unused, simplify


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


def test_a_recorded_step_evaluates_no_unused_value():
    """``pyro.param``'s initial value is evaluated on every call of the model; the recorded
    program drops it (and anything else nothing reads) and gives the same step."""
    pyro.clear_param_store()
    x = torch.randn(64, 3)

    def model(x):
        w = pyro.param("w", torch.zeros(3, 256))  # the initial value: a dead op once stored
        pyro.factor("f", -(x @ w).square().sum())

    svi = CompiledSVI(model, lambda x: None, pyro.optim.SGD({"lr": 1e-3}))
    for _ in range(3):
        svi.step(x)
    (prog,) = svi._programs.values()
    gm = prog.gm
    assert all(n.users or n.op == "output" or n.is_impure() for n in gm.graph.nodes)
    zeros = [n for n in gm.graph.nodes if n.target is torch.ops.aten.zeros.default]
    assert zeros == []  # not the 3 x 256 value (the guard's flag is an input, made once)
    assert drop_unused(gm) == 0
