"""The rational-quadratic spline as an element-wise map: monotone, invertible, exact log-det,
continuous at its knots and tails, the identity at zero parameters, and the same function as
Pyro's independent implementation. (The layers built on it are in the registry test.)"""

from __future__ import annotations

import pytest
import torch
from pyro.distributions.transforms.spline import _monotonic_rational_spline
from torch.nn import functional as F

from pyro_gen import transforms as T
from pyro_gen.transforms.spline import RationalQuadratic

K, B, N = 5, 3.0, 4  # bins, bound, elements


def _raw(scale: float = 1.5, *batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*batch, N, 3 * K - 1, generator=gen, dtype=torch.float64)


def _grid(batch: int) -> torch.Tensor:
    """Sorted points covering both tails and the interval, per element: (batch, N)."""
    return torch.linspace(-2 * B, 2 * B, batch, dtype=torch.float64)[:, None].expand(batch, N)


def _knots(h: RationalQuadratic, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    table = h._knots(raw)
    return table[..., : K + 1], table[..., K + 1 : 2 * (K + 1)]


def test_monotone_and_onto() -> None:
    h = RationalQuadratic(K, B)
    raw = _raw(2.0)
    x = _grid(2001)
    y, _ = h(x, (raw,))
    assert bool((y.diff(dim=0) > 0).all())
    # the interval maps onto itself, the tails are the identity
    outside = x.abs() >= B
    torch.testing.assert_close(y[outside], x[outside], atol=0, rtol=0)
    assert bool((y[~outside].abs() < B).all())


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_inverse_round_trip(scale: float) -> None:
    h = RationalQuadratic(K, B)
    raw = _raw(scale)
    x = torch.cat([_grid(501), 2 * B * torch.rand(200, N, dtype=torch.float64) - B])
    y, ladj = h(x, (raw,))
    x_back, ladj_back = h.inverse(y, (raw,))
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=0)
    # both directions report log|dy/dx| of the forward map
    torch.testing.assert_close(ladj_back, ladj, atol=1e-8, rtol=0)


def test_log_derivative_against_autograd() -> None:
    h = RationalQuadratic(K, B)
    raw = _raw(2.0)
    x = torch.cat([_grid(301), 2 * B * torch.rand(100, N, dtype=torch.float64) - B])
    x.requires_grad_(True)
    y, ladj = h(x, (raw,))
    (dydx,) = torch.autograd.grad(y.sum(), x)  # element-wise map: the Jacobian is diagonal
    torch.testing.assert_close(ladj, dydx.log(), atol=1e-10, rtol=1e-10)
    yd = y.detach().requires_grad_(True)
    x_back, _ = h.inverse(yd, (raw,))
    (dxdy,) = torch.autograd.grad(x_back.sum(), yd)
    torch.testing.assert_close(ladj.detach(), -dxdy.log(), atol=1e-8, rtol=1e-8)


def _value_and_slope(h, v, raw):
    v = v.clone().requires_grad_(True)
    y, _ = h(v, (raw,))
    (g,) = torch.autograd.grad(y.sum(), v)
    return y.detach(), g


def test_continuous_at_knots_and_tails() -> None:
    h = RationalQuadratic(K, B)
    raw = _raw(2.0)
    kx, ky = _knots(h, raw)  # (N, K+1)
    eps = 1e-9
    for side in (-eps, eps):
        # value at every knot (bin edges and the bound) from both sides: the knot itself
        y, _ = h(kx.T + side, (raw,))
        torch.testing.assert_close(y, ky.T, atol=1e-7, rtol=0)
    # the slope is continuous too: at interior knots and where the tails start (slope 1)
    _, left = _value_and_slope(h, kx.T - 1e-7, raw)
    _, right = _value_and_slope(h, kx.T + 1e-7, raw)
    torch.testing.assert_close(left, right, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        left[[0, -1]], torch.ones(2, N, dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_zero_parameters_give_the_identity() -> None:
    h = RationalQuadratic(K, B)
    x = _grid(101)
    y, ladj = h(x, (torch.zeros(N, 3 * K - 1, dtype=torch.float64),))
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj, torch.zeros_like(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: T.spline_coupling(4, num_bins=4, hidden_dims=[8]),
        lambda: T.spline_coupling((2, 2, 2), num_bins=3, hidden_channels=4, num_blocks=1),
        lambda: T.spline_autoregressive(3, [8], num_bins=4),
        lambda: T.spline_autoregressive(3, [8], num_bins=4, inverse=True),
    ],
)
def test_layers_start_at_the_identity(make) -> None:
    t = make().double()
    x = 2.0 * torch.randn(5, *t.event_shape, dtype=torch.float64)
    y = t(x)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), torch.zeros(5, dtype=torch.float64))


def test_agrees_with_pyros_spline() -> None:
    # Pyro's quadratic spline pads its end derivatives with 1 - min_derivative (before the
    # floor is added), so they agree exactly only at min_derivative = 0
    h = RationalQuadratic(K, B, min_bin_size=1e-3, min_derivative=0.0)
    raw = _raw(1.5)
    x = torch.cat([_grid(401), 2 * B * torch.rand(100, N, dtype=torch.float64) - B])
    w, hgt, d = raw[..., :K], raw[..., K : 2 * K], raw[..., 2 * K :]
    d = F.softplus(d + h._shift)
    for inverse in (False, True):
        ours = (h.inverse if inverse else h)(x, (raw,))
        ref = _monotonic_rational_spline(
            x,
            w.softmax(-1).expand(x.shape + (K,)),
            hgt.softmax(-1).expand(x.shape + (K,)),
            d.expand(x.shape + (K - 1,)),
            inverse=inverse,
            bound=B,
            min_derivative=0.0,
        )
        torch.testing.assert_close(ours[0], ref[0], atol=1e-9, rtol=0)
        # Pyro's inverse reports log|dx/dy|; ours reports the forward map's log|dy/dx|
        sign = -1.0 if inverse else 1.0
        torch.testing.assert_close(ours[1], sign * ref[1], atol=1e-8, rtol=0)


def test_parameters_broadcast_over_the_batch() -> None:
    h = RationalQuadratic(K, B)
    raw = _raw(1.0)  # (N, 3K-1): one spline per element, shared by the batch
    x = 2 * torch.randn(7, N, dtype=torch.float64)
    y, ladj = h(x, (raw,))
    y_full, ladj_full = h(x, (raw.expand(7, N, 3 * K - 1),))
    torch.testing.assert_close(y, y_full)
    torch.testing.assert_close(ladj, ladj_full)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_bins": 0}, "num_bins"),
        ({"bound": -1.0}, "bound"),
        ({"num_bins": 10, "min_bin_size": 0.2}, "min_bin_size"),
        ({"min_derivative": 1.0}, "min_derivative"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        RationalQuadratic(**kwargs)


def test_bound_check_names_the_share_outside() -> None:
    x = torch.tensor([[0.0, 1.0], [7.5, -2.0]])
    T.check_spline_bound(x, 8.0)
    with pytest.raises(ValueError, match=r"25\.0% of the values of 'obs'.*\[-5, 5\].*>= 8"):
        T.check_spline_bound(x, 5.0, site="obs")
    T.check_spline_bound(x, 5.0, max_outside=0.25)
