"""Glow: ActNorm, invertible 1x1 convolutions and affine couplings, multi-scale."""

from __future__ import annotations

from collections.abc import Sequence

from pyro_gen.flows.arguments import check_count, check_levels
from pyro_gen.flows.base import FlowModel, image_shape, pixel_output
from pyro_gen.transforms import ActNorm, InvertibleConv1x1, affine_coupling, multi_scale
from pyro_gen.transforms._base import as_event_shape
from pyro_gen.transforms.dequantization import UniformDequantization

__all__ = ["Glow"]


def _steps(shape: tuple[int, ...], depth: int, coupling_kw: dict) -> list:
    """``depth`` Glow steps in Pyro order; each step, data to base: actnorm, 1x1 conv, coupling."""
    mask = "half" if len(shape) == 1 else "channel"
    density: list = []
    for k in range(depth):
        density += [
            ActNorm(shape),
            InvertibleConv1x1(shape),
            affine_coupling(shape, mask=mask, parity=k % 2, **coupling_kw),
        ]
    return list(reversed(density))


class Glow(FlowModel):
    r"""Glow: steps of ActNorm, invertible 1x1 convolution and affine coupling, multi-scale.

    One step, in the density direction (data to base):

    .. math::

        h = (x - b) \odot e^{-s}, \quad h' = W^{-1} h, \quad
        z_{\bar m} = (h'_{\bar m} - t(h'_m)) \odot e^{-\sigma(h'_m)},

    with :math:`W = PL(U + \operatorname{diag}(s))` LU-parameterised so
    :math:`\log|\det W| = HW \sum \log|s|` costs :math:`O(C)`. Images ``(H, W)`` or
    ``(C, H, W)`` with pixels in :math:`[0,1]` use the multi-scale layout: each level squeezes,
    runs ``depth`` steps and factors out half of the channels (the last level keeps them),
    in logit space. Vectors ``(D,)`` get ``depth`` steps with half masks (the 1x1 convolution is
    then a learned LU linear map), handy on 2D toys.

    Args:
        event_shape: ``(D,)``, ``(H, W)`` or ``(C, H, W)``.
        depth: steps per level (:math:`K`, 32 in the paper).
        num_levels: levels (:math:`L`; default: as many as the size allows, <= 3).
        hidden_channels: conditioner conv width (images; 512 in the paper).
        num_blocks: residual blocks per conditioner (images).
        hidden_dims: conditioner MLP widths (vectors).
        alpha: logit margin.
        dequantization: see :class:`~pyro_gen.flows.base.FlowModel`.
        num_bins: discrete levels of the data.
        name: param-store prefix.

    References:
        Kingma, Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions. NeurIPS 2018,
        arXiv:1807.03039.

    Example:
        >>> import torch
        >>> flow = Glow((1, 4, 4), depth=1, hidden_channels=4, num_blocks=1)
        >>> flow.log_prob(torch.rand(3, 1, 4, 4)).shape, flow.sample(2).shape
        (torch.Size([3]), torch.Size([2, 1, 4, 4]))
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (1, 28, 28),
        depth: int = 8,
        num_levels: int | None = None,
        *,
        hidden_channels: int = 64,
        num_blocks: int = 1,
        hidden_dims: Sequence[int] = (256, 256),
        alpha: float = 0.05,
        dequantization: str | UniformDequantization | None = None,
        num_bins: int = 256,
        name: str | None = None,
    ) -> None:
        event_shape = as_event_shape(event_shape)
        depth = check_count("depth", depth)
        if len(event_shape) == 1:
            transforms = _steps(event_shape, depth, dict(hidden_dims=hidden_dims))
        else:
            chw = image_shape(event_shape)
            levels = check_levels("Glow", chw, num_levels, squeeze_last=True)
            kw = dict(hidden_channels=hidden_channels, num_blocks=num_blocks)
            transforms = [multi_scale(chw, lambda s, last: _steps(s, depth, kw), levels)]
            transforms += pixel_output(event_shape, alpha)
        super().__init__(
            event_shape, transforms, name=name, dequantization=dequantization, num_bins=num_bins
        )
