"""Large gradients summed for the guard where they are made: the same flag and gradients,
a tensor written again later still checked after the write, and a sum that overflows
re-checked before a step is skipped."""

from __future__ import annotations

import copy
import math

import pyro
import torch
from pyro.infer import Trace_ELBO
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_gen.infer.compiled import CompiledSVI
from pyro_gen.infer.compiled_check_placement import _SUMMED_MIN_ELEMENTS, check_where_made
from pyro_gen.infer.compiled_optim import non_finite
from pyro_gen.vae import build_vae

CHECK = torch.ops.aten._amp_foreach_non_finite_check_and_unscale_.default


def _checks(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.target is CHECK]


def _step(x, y):
    a = x.exp()  # a weight-like gradient and a view of it, as autograd's t(mm(...))
    b = (x * y).t()
    c = y.sin()
    c.add_(x)  # written in place: the recording names c by its last write
    return a.sum() + b.sum() + c.sum(), non_finite([a, b, c])


def _sums(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    (check,) = _checks(gm)
    return [a for a in check.args[0] if a.target is torch.ops.aten.sum.default]


def test_large_tensors_are_summed_where_made_and_every_non_finite_value_flags():
    x, y = torch.rand(256, 256), torch.rand(256, 256)  # 2**16 elements: summed
    gm = make_fx(_step)(x, y)
    assert check_where_made(gm) == 3
    nodes = list(gm.graph.nodes)
    for total in _sums(gm):  # right after the node that wrote the tensor
        (target,) = total.args
        assert nodes.index(total) == nodes.index(target) + 1
        assert target.target is not torch.ops.aten.t.default  # b is summed at its producer
    cases = [(0.0, 0.0, 0.0), (math.inf, 0.0, 1.0), (0.0, math.nan, 1.0), (-math.inf, 0.0, 1.0)]
    for poison_x, poison_y, expected in cases:
        xs, ys = x.clone(), y.clone()
        xs[1, 2] += poison_x
        ys[200, 0] += poison_y
        assert float(gm(xs, ys)[1]) == expected == float(_step(xs, ys)[1])
    big = torch.full((256, 256), 80.0)  # exp(80) is finite, but 2**16 of them overflow a sum
    assert float(_step(big, big * 0)[1]) == 0.0 and float(gm(big, big * 0)[1]) == 1.0


def _view_then_write(x, y):
    c = y.sin()
    v = c.view(-1)  # v is named by the view node, whose input is written after it
    c.add_(x)
    return v.sum(), non_finite([v])


def test_a_tensor_written_after_the_checked_view_is_checked_as_it_is_at_the_end():
    """Summed at ``sin``, ``v`` would miss the infinity that ``c.add_(x)`` brings in."""
    n = 1 << 16
    gm = make_fx(_view_then_write)(torch.rand(n), torch.rand(n))
    assert check_where_made(gm) == 0
    (check,) = _checks(gm)
    assert list(gm.graph.nodes).index(check) > max(
        i for i, n in enumerate(gm.graph.nodes) if n.target is torch.ops.aten.add_.Tensor
    )
    x = torch.zeros(n)
    x[-1] = math.inf
    assert float(gm(x, torch.rand(n))[1]) == 1.0


def test_small_tensors_stay_in_the_check_as_they_are():
    gm = make_fx(_step)(torch.rand(3, 4), torch.rand(3, 4))
    assert check_where_made(gm) == 0
    (check,) = _checks(gm)
    assert len(check.args[0]) == 3 and _sums(gm) == []


def test_a_program_without_the_guard_is_left_alone():
    gm = make_fx(lambda x: (x.exp() * 2).sum())(torch.rand(3))
    code = gm.code
    assert check_where_made(gm) == 0 and gm.code == code


def test_a_recorded_step_gives_the_same_flag_and_gradients():
    """The VAE's recorded program with its large gradients summed where they are made gives
    the same loss, gradients and flag, bit for bit, as the program that checks them as they
    are at the end."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    module = build_vae((16, 16), z_dim=4, hidden_dim=256)  # 256 x 256 weights: summed
    x = torch.rand(8, 16, 16).round()
    svi = CompiledSVI(module.model, module.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for _ in range(2):
        svi.step(x)
    (prog,) = svi._programs.values()
    large = sum(p.numel() >= _SUMMED_MIN_ELEMENTS for p in prog.grad_params)
    assert large >= 1 and len(_sums(prog.gm)) == large  # on the CPU: summed where made
    unsummed = copy.deepcopy(prog.gm)
    (check,) = _checks(unsummed)
    check.args = (
        [a.args[0] if a.target is torch.ops.aten.sum.default else a for a in check.args[0]],
        *check.args[1:],
    )
    unsummed.recompile()
    inputs = svi._example_inputs(prog, [x])
    got = prog.gm(*[t.clone() for t in inputs])
    expected = unsummed(*[t.clone() for t in inputs])
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_an_overflowing_sum_does_not_skip_a_finite_step():
    """The CPU step re-checks a raised flag exactly: gradients of 4e33, finite, whose sum
    over 2**17 elements overflows float32, still update the parameter (the gradient of
    ``w.sum()`` is also an expanded tensor, which the check reads through a copy)."""
    pyro.clear_param_store()
    n = 1 << 17

    def model():
        w = pyro.param("w", torch.zeros(n))
        pyro.factor("f", 4e33 * w.sum())  # the loss stays finite: sum(w) grows by 5e3 a step

    # SGD: Adam's squared gradients would overflow first
    svi = CompiledSVI(model, lambda: None, pyro.optim.SGD({"lr": 1e-35}))
    for _ in range(3):  # plain, recording, replay
        assert math.isfinite(float(svi.step()))
    assert svi.compiled, svi.fallback_reason
    (prog,) = svi._programs.values()
    assert any(n.target is torch.ops.aten.sum.default for n in prog.gm.graph.nodes)
    before = pyro.param("w").detach().clone()
    assert math.isfinite(float(svi.step()))
    assert not torch.equal(pyro.param("w"), before)
