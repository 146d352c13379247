"""Transform arguments as users give them: those that built a transform giving NaN or wrong
values are one clear error when the transform is built, and the other spellings users have
(a mask or a permutation as a list) are taken as given.

Before: ``log_scale_bound=0`` (or ``inf``, meant as "no bound") gave NaN log-dets from the
first call (``B tanh(raw / B)``); a spline ``bound=inf`` NaN values; ``BatchNorm(momentum=2)``
a negative running variance and NaN eval-mode log-dets; a negative ``eps`` NaN from the
variance floor; ``residual_block(max_iter=0)`` returned the fixed-point solver's first guess
as its sample (0.2 off, silently); a conditional coupling with ``context_dim=0`` built a
network that never read the context; ``ContinuousFlow(t0=t1)`` failed inside torchdiffeq at
the first call; ``UniformDequantization(num_bins=2.5)`` dequantized into 2 levels, and
``VariationalDequantization(num_layers=0)`` "learned" a guide with nothing to learn.
"""

from __future__ import annotations

import math

import pytest
import torch

from pyro_gen import transforms as T

BAD = {
    "iaf log_scale_bound=0": (
        lambda: T.inverse_autoregressive(3, [8], log_scale_bound=0.0),
        r"log_scale_bound must be a positive finite number .* got 0.0",
    ),
    "coupling log_scale_bound=inf": (
        lambda: T.affine_coupling(3, hidden_dims=[8], log_scale_bound=math.inf),
        r"log_scale_bound must be a positive finite number .* got inf",
    ),
    "conditional coupling log_scale_bound=nan": (
        lambda: T.conditional_affine_coupling(3, 2, hidden_dims=[8], log_scale_bound=math.nan),
        r"log_scale_bound must be a positive finite number .* got nan",
    ),
    "Affine(-1)": (lambda: T.Affine(-1.0), r"log_scale_bound must be a positive finite"),
    "spline bound=inf": (
        lambda: T.spline_coupling(3, bound=math.inf, hidden_dims=[8]),
        r"bound must be positive and finite, got inf",
    ),
    "BatchNorm momentum=2": (
        lambda: T.BatchNorm(3, momentum=2.0),
        r"momentum must lie in \[0, 1\]",
    ),
    "BatchNorm momentum=-0.1": (
        lambda: T.BatchNorm(3, momentum=-0.1),
        r"momentum must lie in \[0, 1\]",
    ),
    "BatchNorm eps=-1": (lambda: T.BatchNorm(3, eps=-1.0), r"eps must be a finite number >= 0"),
    "ActNorm eps=-1": (lambda: T.ActNorm(3, eps=-1.0), r"eps must be a finite number >= 0"),
    "residual max_iter=0": (
        lambda: T.residual_block(3, [8], max_iter=0),
        r"max_iter must be a whole number >= 1, got 0",
    ),
    "residual n_exact=-1": (
        lambda: T.residual_block(3, [8], n_exact=-1),
        r"n_exact must be a whole number >= 0, got -1",
    ),
    "residual tol=-1": (
        lambda: T.residual_block(3, [8], tol=-1.0),
        r"tol must be a positive finite number, got -1.0",
    ),
    "conditional coupling context_dim=0": (
        lambda: T.conditional_affine_coupling(3, 0, hidden_dims=[8]),
        r"context_dim must be a whole number >= 1, got 0",
    ),
    "conditional image coupling context_dim=-1": (
        lambda: T.conditional_additive_coupling((2, 2, 2), -1, hidden_channels=4),
        r"context_dim must be a whole number >= 1, got -1",
    ),
    "conditional spline coupling context_dim=2.5": (
        lambda: T.conditional_spline_coupling(3, 2.5, hidden_dims=[8]),
        r"context_dim must be a whole number >= 1, got 2.5",
    ),
    "conditional spline autoregressive context_dim=0": (
        lambda: T.conditional_spline_autoregressive(3, 0, [8]),
        r"context_dim must be a whole number >= 1, got 0",
    ),
    "conditional maf context_dim=0": (
        lambda: T.conditional_masked_autoregressive(3, 0, [8]),
        r"context_dim must be a whole number >= 1, got 0",
    ),
    "conditional iaf context_dim=2.5": (
        lambda: T.conditional_inverse_autoregressive(3, 2.5, [8]),
        r"context_dim must be a whole number >= 1, got 2.5",
    ),
    "ContinuousFlow t0=t1": (
        lambda: T.cnf(2, (4,), t0=0.5, t1=0.5),
        r"t0 and t1 must be finite and differ, got t0=0.5, t1=0.5",
    ),
    "ContinuousFlow rtol=-1": (
        lambda: T.cnf(2, (4,), rtol=-1.0),
        r"rtol and atol must be >= 0, not both 0",
    ),
    "UniformDequantization num_bins=2.5": (
        lambda: T.UniformDequantization((3,), num_bins=2.5),
        r"num_bins must be a whole number >= 1, got 2.5",
    ),
    "VariationalDequantization num_layers=0": (
        lambda: T.VariationalDequantization((3,), num_bins=4, num_layers=0),
        r"num_layers must be a whole number >= 1, got 0",
    ),
    "VariationalDequantization hidden_dims=(0,)": (
        lambda: T.VariationalDequantization((3,), num_bins=4, hidden_dims=(0,)),
        r"hidden_dims must hold positive whole numbers",
    ),
    "ScaledSigmoid event_dim=-1": (
        lambda: T.ScaledSigmoid(0.05, event_dim=-1),
        r"event_dim must be a whole number >= 0, got -1",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_an_argument_that_gave_nan_or_wrong_values_is_refused_when_built(name: str) -> None:
    build, match = BAD[name]
    with pytest.raises(ValueError, match=match):
        build()


def test_the_accepted_edges_still_build_and_invert() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    for t in (
        T.BatchNorm(3, momentum=0.0, eps=0.0).eval(),
        T.BatchNorm(3, momentum=1.0),
        T.residual_block(3, [8], max_iter=1000, n_exact=0, tol=1e-9),
        T.inverse_autoregressive(3, [8], log_scale_bound=0.5),
        T.conditional_affine_coupling(3, 1, hidden_dims=[8]).condition(torch.ones(1)),
    ):
        if isinstance(t, T.BatchNorm) and t.training:
            t.inv(torch.randn(8, 3))  # momentum 1: the running averages are this batch's
            t.eval()
        y = t(x)
        assert torch.isfinite(t.log_abs_det_jacobian(x, y)).all()
        torch.testing.assert_close(t.with_cache(0).inv(y), x, atol=1e-5, rtol=1e-5)


def test_a_conditional_coupling_reads_its_context() -> None:
    # the reason context_dim=0 is refused: the transform must depend on the context
    torch.manual_seed(0)
    t = T.conditional_affine_coupling(4, 2, hidden_dims=[8])
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(4)
    assert not torch.allclose(t.condition(torch.zeros(2))(x), t.condition(torch.ones(2))(x))


def test_an_elementwise_class_passed_for_an_instance_is_one_clear_error() -> None:
    # coupling(4, Affine) built, then failed at the first call with "unpack() missing 1
    # required positional argument: 'n'"
    with pytest.raises(TypeError, match=r"must be an instance, got the class Affine: pass Aff"):
        T.coupling(4, T.Affine, hidden_dims=[8])


@pytest.mark.parametrize(
    "mask", [[1, 0, 1, 0], (True, False, True, False), torch.tensor([1.0, 0.0, 1.0, 0.0])]
)
def test_a_mask_of_zeros_and_ones_is_taken_as_given(mask) -> None:
    # a list failed with "unhashable type: 'list'"
    t = T.affine_coupling(4, mask=mask, hidden_dims=[8])
    assert t.mask.tolist() == [True, False, True, False]


@pytest.mark.parametrize("mask", [[0.5, 0.0, 1.0, 0.0], torch.tensor([2, 0, 1, 0])])
def test_a_mask_of_other_values_is_one_clear_error(mask) -> None:
    # 0.5 and 2 were read as "kept" by .bool(), without a word
    with pytest.raises(ValueError, match=r"a mask holds 0/1 or False/True only"):
        T.affine_coupling(4, mask=mask, hidden_dims=[8])


@pytest.mark.parametrize("indices", [[3, 2, 0, 1], (3, 2, 0, 1), torch.tensor([3, 2, 0, 1])])
def test_permute_takes_indices_as_a_list_as_permute_does(indices) -> None:
    # permute(4, [3, 2, 0, 1]) was refused with "kind must be 'reverse' or 'random'", while
    # Permute([3, 2, 0, 1]) (and Pyro's Permute) took them
    x = torch.tensor([10.0, 11.0, 12.0, 13.0])
    assert T.permute(4, indices)(x).tolist() == [13.0, 12.0, 10.0, 11.0]
    assert T.Permute(indices)(x).tolist() == [13.0, 12.0, 10.0, 11.0]


@pytest.mark.parametrize(
    "indices, match",
    [
        ([0.5, 1.7, 2.2], r"whole-number indices, got \[0.5, 1.7, 2.2\]"),
        ([0, 0, 1], r"not a permutation of range\(3\)"),
        ("shuffle", r"kind must be 'reverse', 'random' or a permutation of range\(3\)"),
    ],
)
def test_a_permutation_that_is_none_is_one_clear_error(indices, match: str) -> None:
    # fractional indices were truncated to [0, 1, 2], a valid permutation, without a word
    with pytest.raises(ValueError, match=match):
        T.permute(3, indices)


IMAGE_COUPLINGS = {
    "affine_coupling": lambda **kw: T.affine_coupling((2, 4, 4), **kw),
    "additive_coupling": lambda **kw: T.additive_coupling((2, 4, 4), mask="channel", **kw),
    "spline_coupling": lambda **kw: T.spline_coupling((2, 4, 4), num_bins=4, **kw),
    "conditional_affine_coupling": lambda **kw: T.conditional_affine_coupling((2, 4, 4), 3, **kw),
    "conditional_spline_coupling": lambda **kw: T.conditional_spline_coupling((2, 4, 4), 3, **kw),
}


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
@pytest.mark.parametrize("name", list(IMAGE_COUPLINGS))
def test_an_image_conditioner_width_that_is_no_count_is_one_clear_error(name, value) -> None:
    # 0 built empty convolutions (a coupling stuck at the identity), -1 failed in torch with
    # "Trying to create tensor with negative dimension", 2.5 in a conv's groups check
    with pytest.raises(ValueError, match=r"^hidden_channels must be a whole number >= 1, got "):
        IMAGE_COUPLINGS[name](hidden_channels=value, num_blocks=1)


@pytest.mark.parametrize("name", list(IMAGE_COUPLINGS))
def test_an_image_conditioner_depth_is_a_count_from_zero(name) -> None:
    for value in (-1, 2.5):
        with pytest.raises(ValueError, match=r"^num_blocks must be a whole number >= 0, got "):
            IMAGE_COUPLINGS[name](hidden_channels=4, num_blocks=value)
    t = IMAGE_COUPLINGS[name](hidden_channels=4, num_blocks=0)
    if isinstance(t, T.ConditionalCoupling):
        t = t.condition(torch.randn(3))
    x = torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(t.inv(t(x)), x)
