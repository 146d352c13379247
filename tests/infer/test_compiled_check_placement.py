"""Large gradients summed for the guard where they are made, or bounded through the factors
of the matrix product that makes them: the same flag and gradients, a tensor written again
later still checked after the write, and a sum or bound that overflows re-checked before a
step is skipped."""

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


def _bounds(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    (check,) = _checks(gm)
    return [a for a in check.args[0] if a.target is torch.ops.aten.mul.Tensor]


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
    large = [p for p in prog.grad_params if p.numel() >= _SUMMED_MIN_ELEMENTS]
    assert len(large) == 2  # the 256 x 256 weights of encoder and decoder
    # the decoder's output layer's gradient (256 x 256 from 8 x 256 factors): bounded; the
    # 256 x 256 hidden weight's too; at batch 8 both have smaller factors than themselves
    assert len(_sums(prog.gm)) + len(_bounds(prog.gm)) == 2 and len(_bounds(prog.gm)) >= 1
    unsummed = copy.deepcopy(prog.gm)
    (check,) = _checks(unsummed)
    moved = {id(n) for n in _sums(unsummed) + _bounds(unsummed)}
    originals = [g for g in unsummed.graph.output_node().args[0][1:] if _numel(g) >= 1 << 16]
    check.args = (
        [a for a in check.args[0] if id(a) not in moved] + originals,
        *check.args[1:],
    )
    unsummed.graph.eliminate_dead_code()
    unsummed.recompile()
    inputs = svi._example_inputs(prog, [x])
    got = prog.gm(*[t.clone() for t in inputs])
    expected = unsummed(*[t.clone() for t in inputs])
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def _numel(node: object) -> int:
    val = getattr(node, "meta", {}).get("val")
    return val.numel() if isinstance(val, torch.Tensor) else 0


def _outer(a, b):
    g = a.t() @ b  # a weight's gradient: a product of two batch-sized factors
    return g.sum(), non_finite([g])


def test_a_product_is_bounded_through_its_factors_before_it_is_made():
    a, b = torch.randn(8, 512), torch.randn(8, 256)  # the product: 512 x 256 = 2**17
    gm = make_fx(_outer)(a, b)
    assert check_where_made(gm) == 1
    assert _sums(gm) == [] and len(_bounds(gm)) == 1
    nodes = list(gm.graph.nodes)
    dots = [n for n in nodes if n.target is torch.ops.aten.dot.default]
    (mm,) = [n for n in nodes if n.target is torch.ops.aten.mm.default]
    assert len(dots) == 2 and max(map(nodes.index, dots)) < nodes.index(mm)
    cases = [(0.0, 0.0, 0.0), (math.inf, 0.0, 1.0), (0.0, math.nan, 1.0), (-math.inf, 0.0, 1.0)]
    for poison_a, poison_b, expected in cases:
        aa, bb = a.clone(), b.clone()
        aa[3, 100] += poison_a
        bb[7, 0] += poison_b
        assert float(gm(aa, bb)[1]) == expected == float(_outer(aa, bb)[1])


def test_a_finite_bound_means_a_finite_product():
    """Whatever the factors' scale, around where the bound overflows and where the product
    does: a bound that lets a step through never hides a non-finite product."""
    gm = make_fx(_outer)(torch.randn(8, 512), torch.randn(8, 256))
    check_where_made(gm)
    gen = torch.Generator().manual_seed(0)
    passed = flagged_finite = 0
    for exponent in range(0, 39):
        for _ in range(3):
            a = torch.randn(8, 512, generator=gen) * 10.0**exponent
            b = torch.randn(8, 256, generator=gen) * 10.0 ** (exponent // 2)
            flag = float(gm(a, b)[1])
            finite = bool(torch.isfinite(a.t() @ b).all())
            assert flag == 1.0 or finite
            passed += flag == 0.0
            flagged_finite += flag == 1.0 and finite
    assert passed > 0 and flagged_finite > 0  # both sides of the bound were reached


def _view_written_then_multiplied(x, y, b):
    a = x.exp()
    v = a.t()  # the product reads a through a view made before the write below
    a.add_(y)
    g = v @ b
    return g.sum(), non_finite([g])


def test_a_factor_written_in_place_is_read_where_the_product_reads_it():
    """Read right after ``exp``, the bound would miss the infinity that ``add_`` brings."""
    x, y, b = torch.rand(8, 512), torch.zeros(8, 512), torch.rand(8, 256)
    gm = make_fx(_view_written_then_multiplied)(x, y, b)
    assert check_where_made(gm) == 1 and len(_bounds(gm)) == 1
    y[2, 3] = math.inf
    assert float(gm(x, y, b)[1]) == 1.0 == float(_view_written_then_multiplied(x, y, b)[1])


def _sibling_view_written(x, y, b):
    a = x.exp()
    g = a.t() @ b  # the product reads a as made...
    w = (a * 2).t()  # ...while w, large too, is written through a sibling view of its base
    w.t().view(-1).add_(y.view(-1))
    return g.sum() + w.sum(), non_finite([g, w])


def test_a_write_through_another_view_keeps_the_check_after_it():
    """``w`` is written through a view made from its base, not through ``w``'s own chain of
    views: summed where its base is made, the check would miss the infinity ``add_`` brings."""
    x, y, b = torch.rand(8, 1 << 13), torch.zeros(8, 1 << 13), torch.rand(8, 256)
    gm = make_fx(_sibling_view_written)(x, y, b)
    assert check_where_made(gm) == 1 and len(_bounds(gm)) == 1 and _sums(gm) == []
    y[2, 3] = math.inf
    assert float(gm(x, y, b)[1]) == 1.0 == float(_sibling_view_written(x, y, b)[1])


def test_factors_larger_than_the_product_leave_it_summed():
    gm = make_fx(_outer)(torch.randn(1024, 256), torch.randn(1024, 256))
    assert check_where_made(gm) == 1 and len(_sums(gm)) == 1 and _bounds(gm) == []


def test_a_half_precision_product_is_summed():
    """Its squared norms would overflow at 256: the bound would ask for the exact check at
    nearly every step."""
    a, b = torch.randn(8, 512).bfloat16(), torch.randn(8, 256).bfloat16()
    gm = make_fx(_outer)(a, b)
    assert check_where_made(gm) == 1 and len(_sums(gm)) == 1 and _bounds(gm) == []


def test_an_overflowing_bound_does_not_skip_a_finite_step():
    """Inputs of 1e20 (their squared norm overflows float32) times output gradients below
    1e-30: the weight's gradient, below 1e-10 an element, is finite and updates the weight."""
    pyro.clear_param_store()
    x, c = torch.full((2, 512), 1e20), torch.rand(2, 256)

    def model(x, c):
        w = pyro.param("w", torch.zeros(512, 256))
        pyro.factor("f", 1e-30 * (x @ w * c).sum())  # its output gradient: 1e-30 c

    svi = CompiledSVI(model, lambda x, c: None, pyro.optim.SGD({"lr": 1.0}))
    for _ in range(3):  # plain, recording, replay
        assert math.isfinite(float(svi.step(x, c)))
    assert svi.compiled, svi.fallback_reason
    (prog,) = svi._programs.values()
    assert len(_bounds(prog.gm)) == 1
    assert float(prog.fn(*svi._example_inputs(prog, [x, c]))[-1]) == 1.0  # the bound: inf
    before = pyro.param("w").detach().clone()
    assert math.isfinite(float(svi.step(x, c)))
    assert not torch.equal(pyro.param("w"), before)


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
