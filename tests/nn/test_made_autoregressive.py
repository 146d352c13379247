"""MADE's autoregressive property, measured with autograd, over orders, widths, parameter
counts and contexts; its size and initialisation next to Pyro's ``AutoRegressiveNN``."""

from __future__ import annotations

import warnings

import pytest
import torch
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from torch import nn
from torch.autograd.functional import jacobian

from pyro_gen.nn import MADE


def _dependence(made: MADE, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """(num_params, D, D): which inputs each output moves with (``J != 0``)."""
    d, p = made.input_dim, made.num_params
    return jacobian(lambda v: made(v, context), x).reshape(p, d, d) != 0


def _allowed(order: torch.Tensor) -> torch.Tensor:
    """(D, D): output i may depend on input j iff j comes before i in ``order``."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    return rank[None, :] < rank[:, None]


ORDERS = {"identity": None, "reversed": "reversed", "random": "random"}


# the narrowest widths that carry every degree: D - 1 alone, D with a context
WIDTHS_AND_CONTEXTS = [([], 0), ([], 2), ([4], 0), ([5], 2), ([16], 0), ([16], 2)]
WIDTHS_AND_CONTEXTS += [([4, 9], 0), ([5, 9], 2), ([24, 24], 0), ([24, 24], 2)]


@pytest.mark.parametrize("order_kind", list(ORDERS))
@pytest.mark.parametrize("widths, context_dim", WIDTHS_AND_CONTEXTS)
@pytest.mark.parametrize("num_params", [1, 3])
def test_every_output_depends_on_exactly_the_inputs_before_it(
    order_kind, widths, num_params, context_dim
) -> None:
    d = 5
    torch.manual_seed(0)
    order = {
        None: None,
        "reversed": torch.arange(d).flip(0),
        "random": torch.randperm(d),
    }[ORDERS[order_kind]]
    # Tanh, not ReLU: a unit at zero slope would hide a connection the masks make
    made = MADE(d, widths, num_params, order=order, context_dim=context_dim, activation=nn.Tanh)
    made = made.double()
    with torch.no_grad():  # a zero output layer would hide every dependence
        for q in made.parameters():
            q.normal_()
    x = torch.randn(d, dtype=torch.float64)
    ctx = torch.randn(context_dim, dtype=torch.float64) if context_dim else None
    dep = _dependence(made, x, ctx)
    allowed = _allowed(made.order).expand_as(dep)
    assert not (dep & ~allowed).any()  # never on itself or a later input
    assert (dep == allowed).all()  # wide enough: every allowed dependence is there
    if context_dim:  # the context reaches every output, the first in the order included
        jc = jacobian(lambda c: made(x, c), ctx).reshape(num_params, d, context_dim)
        assert (jc != 0).any(-1).all()


@pytest.mark.parametrize("widths, context_dim", [([1], 2), ([3], 0), ([4], 2), ([6, 2], 0)])
def test_a_layer_too_narrow_for_the_degrees_warns_and_stays_autoregressive(
    widths, context_dim
) -> None:
    # MADE(2, [1], context_dim=2) had its second output ignore the first input, silently
    d = {1: 2}.get(widths[0], 5)
    with pytest.warns(UserWarning, match=r"narrower than \d.*widths >="):
        made = MADE(d, widths, 2, context_dim=context_dim, activation=nn.Tanh).double()
    with torch.no_grad():
        for q in made.parameters():
            q.normal_()
    ctx = torch.randn(context_dim, dtype=torch.float64) if context_dim else None
    dep = _dependence(made, torch.randn(d, dtype=torch.float64), ctx)
    allowed = _allowed(made.order).expand_as(dep)
    assert not (dep & ~allowed).any()
    assert (dep != allowed).any()  # what the warning is about


def test_wide_enough_layers_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MADE(5, [4, 4], 2)
        MADE(5, [5], 2, context_dim=1)
        MADE(1, [1], 2)


def test_output_layout_is_parameter_major_as_pyros() -> None:
    # out.unflatten(-1, (num_params, D))[..., p, i]: parameter p of input i, the layout of
    # Pyro's AutoRegressiveNN(count_params == 1) and what the transforms read
    made = MADE(3, [8], 2, order=[2, 0, 1], zero_init_output=False)
    with torch.no_grad():
        made.output.bias.copy_(torch.arange(6.0))
        made.output.weight.zero_()
    out = made(torch.randn(4, 3)).unflatten(-1, (2, 3))
    assert torch.equal(out[0], torch.tensor([[0.0, 1, 2], [3, 4, 5]]))


@pytest.mark.parametrize(
    "d, widths, num_params, context_dim",
    [(5, [16, 16], 2, 0), (5, [16], 3, 0), (4, [12, 12], 2, 3)],
)
def test_same_parameter_count_and_initial_scale_as_pyros(d, widths, num_params, context_dim):
    ours = MADE(d, widths, num_params, context_dim=context_dim, zero_init_output=False)
    theirs = (
        ConditionalAutoRegressiveNN(d, context_dim, widths, param_dims=[1] * num_params)
        if context_dim
        else AutoRegressiveNN(d, widths, param_dims=[1] * num_params)
    )
    shapes = [tuple(q.shape) for q in ours.parameters()]
    assert sorted(shapes) == sorted(tuple(q.shape) for q in theirs.parameters())
    # both are nn.Linear's default: uniform within 1/sqrt(fan_in)
    for layer in [m for m in ours.modules() if isinstance(m, nn.Linear)]:
        assert layer.weight.abs().max() <= layer.in_features**-0.5


def test_made_is_autoregressive_with_leading_batch_dims_and_a_shared_context() -> None:
    made = MADE(3, [8], 2, context_dim=2, zero_init_output=False)
    x, c = torch.randn(4, 5, 3), torch.randn(5, 2)
    out = made(x, c)
    assert out.shape == (4, 5, 6)
    assert torch.allclose(out[1, 2], made(x[1, 2], c[2]))
