"""NICE: additive couplings and a diagonal scaling, as a density model."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pyro_gen.flows.arguments import check_count
from pyro_gen.flows.base import FlowModel, flat_pixel_output
from pyro_gen.transforms import ActNorm, additive_coupling
from pyro_gen.transforms._base import as_event_shape
from pyro_gen.transforms.dequantization import UniformDequantization

__all__ = ["NICE"]


class NICE(FlowModel):
    r"""NICE: volume-preserving additive couplings followed by a diagonal scaling.

    .. math::

        y_{\bar m} = x_{\bar m} + t(x_m), \qquad
        \log p(x) = \log \mathcal{N}(z; 0, I) + \textstyle\sum_i s_i,

    with the coupling masks alternating between layers. Only the final scaling
    :math:`\operatorname{diag}(e^{s})` changes volume (here an
    :class:`~pyro_gen.transforms.ActNorm`, i.e. with data-dependent initialisation). Images
    (``(H, W)`` or ``(C, H, W)``, pixels in :math:`[0,1]`) are flattened, as in the paper, and
    modelled in logit space.

    Args:
        event_shape: ``(D,)``, ``(H, W)`` or ``(C, H, W)``.
        num_layers: number of additive couplings (4 in the paper).
        hidden_dims: hidden widths of each coupling's MLP.
        alpha: logit margin for images.
        dequantization: see :class:`~pyro_gen.flows.base.FlowModel`.
        num_bins: discrete levels of the data.
        name: param-store prefix.

    References:
        Dinh, Krueger, Bengio. NICE: Non-linear Independent Components Estimation. ICLR 2015
        workshop, arXiv:1410.8516.

    Example:
        >>> import torch
        >>> flow = NICE((2,), num_layers=2, hidden_dims=(8,))
        >>> flow.log_prob(torch.randn(5, 2)).shape, flow.sample(3).shape
        (torch.Size([5]), torch.Size([3, 2]))
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (2,),
        num_layers: int = 4,
        hidden_dims: Sequence[int] = (256, 256),
        *,
        alpha: float = 1e-6,
        dequantization: str | UniformDequantization | None = None,
        num_bins: int = 256,
        name: str | None = None,
    ) -> None:
        event_shape = as_event_shape(event_shape)
        num_layers = check_count("num_layers", num_layers)
        dim = math.prod(event_shape)
        transforms: list = [ActNorm(dim)]
        for i in reversed(range(num_layers)):
            transforms.append(additive_coupling(dim, parity=i % 2, hidden_dims=hidden_dims))
        transforms += flat_pixel_output(event_shape, alpha)
        super().__init__(
            event_shape, transforms, name=name, dequantization=dequantization, num_bins=num_bins
        )
