r"""Monotone rational-quadratic splines: the element-wise map of neural spline flows.

:class:`RationalQuadratic` is an :class:`~pyro_gen.transforms.elementwise.ElementwiseBijection`
like :class:`~pyro_gen.transforms.elementwise.Affine`, so the generic
:class:`~pyro_gen.transforms.coupling.Coupling` and the autoregressive transforms become
neural spline flows without a layer class of their own (the design of zuko's ``univariate``
argument). The helpers here only pick that element-wise map and size the conditioner:
:func:`spline_coupling` (NSF-C), :func:`spline_autoregressive` (NSF-AR, MAF or IAF direction)
and their conditional versions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from pyro_gen.nn.arguments import check_count
from pyro_gen.transforms.autoregressive import (
    ConditionalInverseAutoregressive,
    ConditionalMaskedAutoregressive,
    InverseAutoregressive,
    MaskedAutoregressive,
    _made,
)
from pyro_gen.transforms.coupling import (
    ConditionalCoupling,
    Coupling,
    _conditioner,
    make_mask,
)
from pyro_gen.transforms.elementwise import ElementwiseBijection
from pyro_gen.transforms.pyro_arguments import pyro_arguments

__all__ = [
    "RationalQuadratic",
    "check_spline_bound",
    "conditional_spline_autoregressive",
    "conditional_spline_coupling",
    "spline_autoregressive",
    "spline_coupling",
]


class RationalQuadratic(ElementwiseBijection):
    r"""Monotone rational-quadratic spline on :math:`[-B, B]`, the identity outside.

    :math:`K` bins with knots :math:`(x_k, y_k)` and knot derivatives :math:`\delta_k > 0`;
    in bin :math:`k`, with :math:`\xi = (x - x_k)/w_k`, :math:`s_k = h_k / w_k`,

    .. math::

        y = y_k + \frac{h_k\,[s_k \xi^2 + \delta_k \xi(1-\xi)]}
                       {s_k + (\delta_{k+1} + \delta_k - 2 s_k)\,\xi(1-\xi)},
        \qquad
        \frac{dy}{dx} = \frac{s_k^2\,[\delta_{k+1}\xi^2 + 2 s_k \xi(1-\xi)
                        + \delta_k (1-\xi)^2]}
                       {[s_k + (\delta_{k+1} + \delta_k - 2 s_k)\,\xi(1-\xi)]^2},

    and the inverse is the root in :math:`[0, 1]` of a quadratic in :math:`\xi`. The end
    knots are :math:`(\pm B, \pm B)` with :math:`\delta_0 = \delta_K = 1`, so the linear
    tails (the identity) join the spline with a continuous derivative.

    Parameters per element (``num_params = 3K - 1``, in this order): ``K`` raw widths and
    ``K`` raw heights (softmax, each bin at least ``min_bin_size`` of :math:`2B`) and
    ``K - 1`` raw interior derivatives (``min_derivative + softplus(raw + c)``, with
    :math:`c` chosen so that 0 gives 1). All-zero parameters give equal bins and unit
    derivatives, i.e. the identity, so a zero-initialised conditioner starts at identity.

    Args:
        num_bins: :math:`K`.
        bound: :math:`B`; values outside :math:`[-B, B]` pass through unchanged.
        min_bin_size: least width and height of a bin, as a share of :math:`2B`.
        min_derivative: least knot derivative.

    References:
        Durkan, Bekasov, Murray, Papamakarios. Neural Spline Flows. NeurIPS 2019,
        arXiv:1906.04032.

    Example:
        >>> h = RationalQuadratic(num_bins=4, bound=3.0)
        >>> x = torch.tensor([-4.0, -1.0, 0.5, 2.0, 4.0])
        >>> y, ladj = h(x, h.unpack(torch.zeros(55), 0, 5))  # zero parameters: identity
        >>> torch.allclose(y, x), torch.allclose(ladj, torch.zeros(5), atol=1e-6)
        (True, True)
    """

    def __init__(
        self,
        num_bins: int = 8,
        bound: float = 5.0,
        *,
        min_bin_size: float = 1e-3,
        min_derivative: float = 1e-3,
    ) -> None:
        super().__init__()
        if int(num_bins) != num_bins or num_bins < 1:
            raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
        if not 0 < bound < math.inf:  # inf built a spline whose every value was NaN
            raise ValueError(f"bound must be positive and finite, got {bound!r}")
        if not 0 <= min_bin_size * num_bins < 1:
            raise ValueError(
                f"min_bin_size * num_bins must lie in [0, 1), got {min_bin_size} * {num_bins}"
            )
        if not 0 <= min_derivative < 1:
            raise ValueError(f"min_derivative must lie in [0, 1), got {min_derivative!r}")
        self.num_bins = int(num_bins)
        self.bound = float(bound)
        self.min_bin_size = float(min_bin_size)
        self.min_derivative = float(min_derivative)
        self.num_params = 3 * self.num_bins - 1
        # softplus(raw + shift) = 1 - min_derivative at raw = 0 (identity at zero init)
        self._shift = math.log(math.expm1(1.0 - self.min_derivative))
        k = self.num_bins + 1
        # where x_k, x_{k+1}, y_k, y_{k+1}, d_k, d_{k+1} sit in the flat knot table of one
        # element (a buffer so it follows .to(device)); one gather fetches all six
        offsets = torch.tensor([0, 1, k, k + 1, 2 * k, 2 * k + 1])
        self.register_buffer("_offsets", offsets, persistent=False)

    def unpack(self, theta: torch.Tensor, dim: int, n: int) -> tuple[torch.Tensor, ...]:
        """One tensor ``(..., n, *rest, 3K - 1)``: the parameters of each element last.

        A view of the conditioner's output (no copies), instead of :math:`3K - 1` separate
        tensors that would be stacked again.
        """
        dim = dim % theta.dim()
        return (theta.unflatten(dim, (self.num_params, n)).movedim(dim, -1),)

    def _knots(self, raw: torch.Tensor) -> torch.Tensor:
        """Flat table ``(..., 3(K+1))``: knot abscissae, ordinates, then derivatives."""
        k, b = self.num_bins, self.bound
        # widths and heights together: one softmax and one cumsum over a (2, K) view
        wh = raw[..., : 2 * k].unflatten(-1, (2, k)).softmax(-1)
        if self.min_bin_size > 0:
            wh = self.min_bin_size + (1.0 - self.min_bin_size * k) * wh
        knots = F.pad(wh.cumsum(-1), (1, 0)) * (2 * b) - b  # (..., 2, K+1), from -B to ~B
        d = F.softplus(raw[..., 2 * k :] + self._shift)
        if self.min_derivative > 0:
            d = d + self.min_derivative
        d = F.pad(d, (1, 1), value=1.0)  # unit slope at +-B meets the identity tails
        return torch.cat([knots.flatten(-2), d], -1)

    def _bin(self, v: torch.Tensor, raw: torch.Tensor, row: int) -> tuple[torch.Tensor, ...]:
        """(x_k, x_{k+1}, y_k, y_{k+1}, d_k, d_{k+1}) of the bin holding ``v``, searched in
        the abscissae (``row=0``, forward) or ordinates (``row=1``, inverse)."""
        table = self._knots(raw)
        if table.shape[:-1] != v.shape:  # a conditioner broadcast over the batch
            shape = torch.broadcast_shapes(table.shape[:-1], v.shape)
            table, v = table.expand(*shape, table.shape[-1]), v.expand(shape)
        k = self.num_bins
        start = row * (k + 1)
        interior = table[..., start + 1 : start + k]
        idx = (v.unsqueeze(-1) >= interior).sum(-1, keepdim=True)  # bin index, 0..K-1
        return table.gather(-1, idx + self._offsets).unbind(-1)

    def _inside(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.bound
        return (v > -b) & (v < b), v.clamp(-b, b)

    def forward(self, x, params):
        (raw,) = params
        inside, xc = self._inside(x)
        x0, x1, y0, y1, d0, d1 = self._bin(xc, raw, 0)
        w, h = x1 - x0, y1 - y0
        s = h / w
        xi = (xc - x0) / w
        t = xi * (1.0 - xi)
        den = s + (d0 + d1 - 2.0 * s) * t
        y = y0 + h * (s * xi * xi + d0 * t) / den
        num = d1 * xi * xi + 2.0 * s * t + d0 * (1.0 - xi) ** 2
        ladj = torch.log(s * s * num / (den * den))
        return torch.where(inside, y, x), torch.where(inside, ladj, 0.0)

    def inverse(self, y, params):
        (raw,) = params
        inside, yc = self._inside(y)
        x0, x1, y0, y1, d0, d1 = self._bin(yc, raw, 1)
        w, h = x1 - x0, y1 - y0
        s = h / w
        dy = yc - y0
        slope_sum = d0 + d1 - 2.0 * s
        a = h * (s - d0) + dy * slope_sum
        b = h * d0 - dy * slope_sum
        c = -s * dy
        # the root in [0, 1], written so it does not cancel (Durkan et al., eq. 29)
        disc = (b * b - 4.0 * a * c).clamp(min=0.0)
        xi = (2.0 * c) / (-b - disc.sqrt())
        x = x0 + xi * w
        t = xi * (1.0 - xi)
        den = s + slope_sum * t
        num = d1 * xi * xi + 2.0 * s * t + d0 * (1.0 - xi) ** 2
        ladj = torch.log(s * s * num / (den * den))
        return torch.where(inside, x, y), torch.where(inside, ladj, 0.0)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, bound={self.bound}"


def check_spline_bound(
    x: torch.Tensor, bound: float, *, site: str = "x", max_outside: float = 0.0
) -> None:
    """Raises a ValueError when more than ``max_outside`` of the values lie outside the bound.

    A spline is the identity outside :math:`[-B, B]`, so data there are modelled by the
    base distribution alone; a flow whose data-side spline does not cover the data cannot
    fit them. Only the data-side layer sees the data, so only it can be checked.

    Args:
        x: data as the first spline layer sees them.
        bound: the spline's :math:`B`.
        site: name used in the message.
        max_outside: share of values allowed outside (0 = none).

    Example:
        >>> check_spline_bound(torch.tensor([0.5, -2.0]), 3.0)
        >>> check_spline_bound(torch.tensor([0.5, 4.0]), 3.0)
        Traceback (most recent call last):
        ...
        ValueError: 50.0% of the values of 'x' lie outside the spline bound [-3, 3] ...
    """
    outside = x.detach().abs() > bound
    # a count, not a float32 mean, so a share exactly at max_outside passes
    share = outside.sum().item() / x.numel() if x.numel() else 0.0
    if share > max_outside:
        largest = x.detach().abs().max().item()
        raise ValueError(
            f"{100 * share:.1f}% of the values of {site!r} lie outside the spline bound "
            f"[-{bound:g}, {bound:g}] (largest |x| = {largest:.3g}); build the flow with "
            f"bound >= {math.ceil(largest):g} or standardize the data"
        )


# --------------------------------------------------------------------------- helpers


@pyro_arguments
def spline_coupling(
    event_shape: int | Sequence[int],
    *,
    num_bins: int = 8,
    bound: float = 5.0,
    mask: str | torch.Tensor | None = None,
    parity: int = 0,
    hidden_dims: Sequence[int] = (256, 256),
    hidden_channels: int = 64,
    num_blocks: int = 2,
    cache_size: int = 1,
) -> Coupling:
    """Builds a spline :class:`~pyro_gen.transforms.coupling.Coupling` (NSF-C), starting at
    the identity; arguments as :func:`~pyro_gen.transforms.coupling.coupling`, plus the
    spline's ``num_bins`` and ``bound`` (see :class:`RationalQuadratic`).

    Example:
        >>> t = spline_coupling(4, num_bins=4, hidden_dims=[8])
        >>> x = 2 * torch.randn(3, 4)
        >>> torch.allclose(t(x), x, atol=1e-6)  # identity at initialisation
        True
    """
    h = RationalQuadratic(num_bins, bound)
    m = make_mask(event_shape, mask, parity)
    net = _conditioner(m, h.num_params, hidden_dims, hidden_channels, num_blocks, None)
    return Coupling(m, net, h, cache_size=cache_size)


@pyro_arguments
def conditional_spline_coupling(
    event_shape: int | Sequence[int],
    context_dim: int,
    *,
    num_bins: int = 8,
    bound: float = 5.0,
    mask: str | torch.Tensor | None = None,
    parity: int = 0,
    hidden_dims: Sequence[int] = (256, 256),
    hidden_channels: int = 64,
    num_blocks: int = 2,
    cache_size: int = 1,
) -> ConditionalCoupling:
    """Builds a conditional spline coupling; the context is fed to the conditioner.

    Arguments as :func:`spline_coupling`.

    Example:
        >>> t = conditional_spline_coupling(4, 2, hidden_dims=[8])
        >>> tc = t.condition(torch.randn(2))
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(tc.inv(tc(x).clone()), x, atol=1e-5)
        True
    """
    h = RationalQuadratic(num_bins, bound)
    m = make_mask(event_shape, mask, parity)
    net = _conditioner(m, h.num_params, hidden_dims, hidden_channels, num_blocks, context_dim)
    return ConditionalCoupling(m, net, h, cache_size=cache_size)


@pyro_arguments
def spline_autoregressive(
    input_dim: int,
    hidden_dims: Sequence[int] | None = None,
    *,
    num_bins: int = 8,
    bound: float = 5.0,
    inverse: bool = False,
    order: torch.Tensor | None = None,
    cache_size: int = 1,
) -> MaskedAutoregressive | InverseAutoregressive:
    """Builds an autoregressive spline layer (NSF-AR) on a zero-initialised MADE.

    Args:
        input_dim: :math:`D`.
        hidden_dims: MADE hidden widths (default ``[max(10 D, 32)] * 2``).
        num_bins: spline bins :math:`K`.
        bound: spline bound :math:`B`.
        inverse: ``False`` (default) gives the MAF direction
            (:class:`~pyro_gen.transforms.autoregressive.MaskedAutoregressive`: one-pass
            density, what a density model wants); ``True`` the IAF direction (one-pass
            sampling, for guides), which is the direction of Pyro's own
            ``spline_autoregressive``.
        order: MADE input order.
        cache_size: 1 (default) or 0.

    Example:
        >>> t = spline_autoregressive(3, [16], num_bins=4)
        >>> type(t).__name__, t.made.input_dim
        ('MaskedAutoregressive', 3)
    """
    h = RationalQuadratic(num_bins, bound)
    made = _made(input_dim, hidden_dims, h, order, 0)
    cls = InverseAutoregressive if inverse else MaskedAutoregressive
    return cls(input_dim, made, h, cache_size=cache_size)


@pyro_arguments
def conditional_spline_autoregressive(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] | None = None,
    *,
    num_bins: int = 8,
    bound: float = 5.0,
    inverse: bool = False,
    order: torch.Tensor | None = None,
    cache_size: int = 1,
) -> ConditionalMaskedAutoregressive | ConditionalInverseAutoregressive:
    """Builds a conditional autoregressive spline layer; arguments as
    :func:`spline_autoregressive`, the context feeding every MADE hidden unit.

    Example:
        >>> t = conditional_spline_autoregressive(3, 2, [8], inverse=True)
        >>> t.condition(torch.zeros(2))(torch.randn(4, 3)).shape
        torch.Size([4, 3])
    """
    h = RationalQuadratic(num_bins, bound)
    made = _made(input_dim, hidden_dims, h, order, check_count("context_dim", context_dim))
    cls = ConditionalInverseAutoregressive if inverse else ConditionalMaskedAutoregressive
    return cls(input_dim, made, h, cache_size=cache_size)
