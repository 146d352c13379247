"""MAF: masked autoregressive flow as a density model."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pyro_gen.flows.arguments import check_count
from pyro_gen.flows.base import FlowModel, flat_pixel_output
from pyro_gen.transforms import BatchNorm, masked_autoregressive, permute
from pyro_gen.transforms._base import as_event_shape
from pyro_gen.transforms.dequantization import UniformDequantization

__all__ = ["MAF"]


class MAF(FlowModel):
    r"""Masked autoregressive flow: MADE-conditioned affine layers with reversed orders between.

    .. math::

        x_i = u_i \exp(\alpha_i(x_{<i})) + \mu_i(x_{<i}), \qquad
        \log p(x) = \log \mathcal{N}(u; 0, I) - \textstyle\sum_i \alpha_i(x_{<i}),

    so ``log_prob`` takes one MADE pass per layer and ``sample`` takes :math:`D` (the MAF
    trade-off; IAF is the reverse). Optional flow batch norm between layers as in the paper.
    Images (``(H, W)`` or ``(C, H, W)``, pixels in :math:`[0,1]`) are flattened and modelled in
    logit space (:math:`\alpha = 10^{-6}` as in the paper).

    Args:
        event_shape: ``(D,)``, ``(H, W)`` or ``(C, H, W)``.
        num_layers: number of autoregressive layers (5 in the paper's MAF(5)).
        hidden_dims: MADE hidden widths.
        batch_norm: insert :class:`~pyro_gen.transforms.BatchNorm` between layers.
        alpha: logit margin for images.
        dequantization: see :class:`~pyro_gen.flows.base.FlowModel`.
        num_bins: discrete levels of the data.
        name: param-store prefix.

    References:
        Papamakarios, Pavlakou, Murray. Masked Autoregressive Flow for Density Estimation.
        NeurIPS 2017, arXiv:1705.07057.

    Example:
        >>> import torch
        >>> flow = MAF((3,), num_layers=2, hidden_dims=(16,))
        >>> flow.log_prob(torch.randn(5, 3)).shape, flow.sample(2).shape
        (torch.Size([5]), torch.Size([2, 3]))
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (2,),
        num_layers: int = 5,
        hidden_dims: Sequence[int] = (256, 256),
        *,
        batch_norm: bool = False,
        alpha: float = 1e-6,
        dequantization: str | UniformDequantization | None = None,
        num_bins: int = 256,
        name: str | None = None,
    ) -> None:
        event_shape = as_event_shape(event_shape)
        num_layers = check_count("num_layers", num_layers)
        dim = math.prod(event_shape)
        density_order: list = []  # data -> base
        for i in range(num_layers):
            if i > 0:
                density_order.append(permute(dim, "reverse"))
                if batch_norm:
                    density_order.append(BatchNorm(dim))
            density_order.append(masked_autoregressive(dim, hidden_dims=hidden_dims))
        transforms = list(reversed(density_order)) + flat_pixel_output(event_shape, alpha)
        super().__init__(
            event_shape, transforms, name=name, dequantization=dequantization, num_bins=num_bins
        )
