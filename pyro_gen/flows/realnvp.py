"""RealNVP: affine couplings, vector and multi-scale image versions, as density models."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch.distributions import Transform

from pyro_gen.flows.arguments import check_count, check_levels, level_fits
from pyro_gen.flows.base import FlowModel, image_shape, pixel_output
from pyro_gen.transforms import BatchNorm, Unsqueeze, affine_coupling, multi_scale
from pyro_gen.transforms._base import as_event_shape
from pyro_gen.transforms.dequantization import UniformDequantization
from pyro_gen.transforms.reshape import Squeeze

__all__ = ["RealNVP", "max_levels", "multiscale_couplings"]


def max_levels(shape: Sequence[int], squeeze_last: bool, cap: int = 3) -> int:
    """Most multi-scale levels (<= ``cap``) an image ``(C, H, W)`` allows.

    Every level but the last squeezes (halving H and W); with ``squeeze_last`` (Glow) the last
    one does too.

    Example:
        >>> max_levels((1, 28, 28), squeeze_last=False), max_levels((1, 28, 28), squeeze_last=True)
        (3, 2)
    """
    best = 1
    for levels in range(1, cap + 1):
        if level_fits(tuple(shape), levels, squeeze_last):  # type: ignore[arg-type]
            best = levels
    return best


def multiscale_couplings(
    chw: tuple[int, int, int],
    make_coupling: Callable[[tuple[int, int, int], str, int], Transform],
    num_layers: int,
    levels: int,
) -> Transform:
    """RealNVP's multi-scale stack for any coupling: ``make_coupling(shape, mask, parity)``.

    Each level (density direction) runs ``num_layers`` checkerboard couplings, squeezes,
    runs ``num_layers`` channel couplings and factors out half of the channels; the last
    level runs ``num_layers + 1`` checkerboard couplings. The affine couplings give RealNVP,
    spline couplings the multi-scale neural spline flow (:class:`~pyro_gen.flows.NSF`).

    Example:
        >>> import torch
        >>> from pyro_gen.transforms import affine_coupling
        >>> t = multiscale_couplings(
        ...     (1, 4, 4), lambda s, m, p: affine_coupling(s, mask=m, parity=p, hidden_channels=4),
        ...     num_layers=1, levels=2)
        >>> t(torch.randn(3, 16)).shape
        torch.Size([3, 1, 4, 4])
    """

    def level(shape: tuple[int, int, int], last: bool) -> list:
        # Pyro order (base to data): channel couplings, unsqueeze, checkerboard ones.
        n = num_layers + 1 if last else num_layers
        parts: list = []
        if not last:
            squeezed = Squeeze(shape).out_shape
            parts += [make_coupling(squeezed, "channel", j % 2) for j in range(num_layers)[::-1]]
            parts.append(Unsqueeze(squeezed))
        parts += [make_coupling(shape, "checkerboard", j % 2) for j in reversed(range(n))]
        return parts

    return multi_scale(chw, level, levels, squeeze=False)


class RealNVP(FlowModel):
    r"""RealNVP: affine couplings :math:`y_{\bar m} = x_{\bar m} e^{s(x_m)} + t(x_m)`.

    .. math::

        \log p(x) = \log \mathcal{N}(z; 0, I) - \textstyle\sum_{\text{layers}} \sum_{i \notin m}
        s_i(x_m).

    Vectors ``(D,)``: ``num_layers`` couplings with alternating masks (optionally flow batch
    norm between them). Images ``(H, W)`` or ``(C, H, W)`` with pixels in :math:`[0,1]`: the
    multi-scale architecture of the paper in logit space. Each level (density direction) runs
    ``num_layers`` checkerboard couplings, squeezes, runs ``num_layers`` channel couplings and
    factors out half of the channels; the last level runs ``num_layers + 1`` checkerboard
    couplings. Conditioners are small residual conv nets.

    Args:
        event_shape: ``(D,)``, ``(H, W)`` or ``(C, H, W)``.
        num_layers: couplings (vectors: in total; images: per stage, 3 in the paper).
        hidden_dims: MLP hidden widths (vectors).
        hidden_channels: conv width (images).
        num_blocks: residual blocks per conditioner (images).
        num_levels: multi-scale levels (images; default: as many as the size allows, <= 3).
        batch_norm: flow batch norm between vector couplings.
        alpha: logit margin (0.05 in the paper).
        dequantization: see :class:`~pyro_gen.flows.base.FlowModel`.
        num_bins: discrete levels of the data.
        name: param-store prefix.

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017,
        arXiv:1605.08803.

    Example:
        >>> import torch
        >>> flow = RealNVP((2,), num_layers=4, hidden_dims=(16,))
        >>> flow.log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
        >>> image = RealNVP((1, 8, 8), num_layers=1, hidden_channels=4, num_blocks=1)
        >>> image.sample(2).shape, image.base_shape
        (torch.Size([2, 1, 8, 8]), torch.Size([64]))
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (2,),
        num_layers: int = 8,
        hidden_dims: Sequence[int] = (256, 256),
        *,
        hidden_channels: int = 64,
        num_blocks: int = 2,
        num_levels: int | None = None,
        batch_norm: bool = False,
        alpha: float = 0.05,
        dequantization: str | UniformDequantization | None = None,
        num_bins: int = 256,
        name: str | None = None,
    ) -> None:
        event_shape = as_event_shape(event_shape)
        num_layers = check_count("num_layers", num_layers)
        if len(event_shape) == 1:
            density_order: list = []
            for i in range(num_layers):
                if batch_norm and i > 0:
                    density_order.append(BatchNorm(event_shape))
                density_order.append(
                    affine_coupling(event_shape, parity=i % 2, hidden_dims=hidden_dims)
                )
            transforms = list(reversed(density_order))
        else:
            chw = image_shape(event_shape)
            levels = check_levels("RealNVP", chw, num_levels, squeeze_last=False)
            conv = dict(hidden_channels=hidden_channels, num_blocks=num_blocks)

            def make(shape: tuple[int, int, int], mask: str, parity: int):
                return affine_coupling(shape, mask=mask, parity=parity, **conv)

            transforms = [multiscale_couplings(chw, make, num_layers, levels)]
            transforms += pixel_output(event_shape, alpha)
        super().__init__(
            event_shape, transforms, name=name, dequantization=dequantization, num_bins=num_bins
        )
