"""Conditional batch normalization: batch norm whose scale and shift depend on a context."""

from __future__ import annotations

import torch
from torch import nn

from pyro_gen.nn.arguments import check_count


class ConditionalBatchNorm(nn.Module):
    """Batch norm with a per-context scale and shift (de Vries et al. 2017; Dumoulin et al.
    2017), the class-conditional generator of Miyato & Koyama (2018):

    .. math:: \\text{CBN}(h, c) = \\big(1 + \\gamma(c)\\big) \\odot \\hat h + \\beta(c),
              \\qquad \\hat h = \\frac{h - \\mu_B}{\\sqrt{\\sigma^2_B + \\epsilon}},

    where :math:`\\gamma(c) = W_\\gamma c` and :math:`\\beta(c) = W_\\beta c` are linear in
    the context (for a one-hot label: one scale and shift per class) and start at zero, so
    the layer starts as plain batch norm. The label then acts on every feature map of each
    layer, not only through the input.

    Args:
        num_features: channels (dimension 1 of the input).
        context_dim: size of the context vector.
        eps: batch norm's epsilon.
        momentum: batch norm's momentum for the running statistics.

    References:
        de Vries et al., Modulating early visual processing by language, arXiv:1707.00683.
        Dumoulin, Shlens & Kudlur, A Learned Representation For Artistic Style,
        arXiv:1610.07629. Miyato & Koyama, cGANs with Projection Discriminator,
        arXiv:1802.05637.

    Example:
        >>> bn = ConditionalBatchNorm(3, context_dim=2)
        >>> h, c = torch.randn(4, 3, 5, 5), torch.eye(2)[[0, 1, 1, 0]]
        >>> torch.allclose(bn(h, c), nn.BatchNorm2d(3)(h), atol=1e-6)  # plain BN at first
        True
    """

    def __init__(
        self, num_features: int, context_dim: int, *, eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__()
        num_features = check_count("num_features", num_features)
        context_dim = check_count("context_dim", context_dim)
        # BatchNorm1d normalizes dimension 1 of inputs of any rank >= 2
        self.norm = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=False)
        self.scale = nn.Linear(context_dim, num_features, bias=False)
        self.shift = nn.Linear(context_dim, num_features, bias=False)
        nn.init.zeros_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Normalizes ``h`` (shape ``(B, C, ...)``) and applies the scale and shift of each
        example's context (shape ``(B, context_dim)``)."""
        if context.dim() != 2 or context.shape[-1] != self.scale.in_features:
            raise ValueError(  # was torch's "mat1 and mat2 shapes cannot be multiplied"
                f"context must have shape (batch, context_dim={self.scale.in_features}), got "
                f"{tuple(context.shape)}"
            )
        if context.shape[0] != h.shape[0]:
            raise ValueError(
                f"one context per example: {h.shape[0]} examples, context of shape "
                f"{tuple(context.shape)}"
            )
        spatial = (1,) * (h.dim() - 2)
        gain = (1 + self.scale(context)).view(*context.shape[:1], -1, *spatial)
        bias = self.shift(context).view(*context.shape[:1], -1, *spatial)
        return self.norm(h.flatten(2) if h.dim() > 3 else h).view_as(h) * gain + bias
