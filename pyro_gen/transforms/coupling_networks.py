"""The conditioner network a coupling helper builds for its mask, with its sizes checked.

``hidden_channels`` and ``num_blocks`` went straight to the conv net: ``num_blocks=-1`` built a
net with no residual blocks as ``0`` does, ``hidden_channels=0`` a net of empty convolutions
(a coupling that can only stay at the identity), ``-1`` failed in torch with "Trying to create
tensor with negative dimension", and ``2.5`` with "'float' object cannot be interpreted as an
integer"; none named the argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_gen.nn.arguments import check_count
from pyro_gen.nn.mlp import MLP
from pyro_gen.nn.resnet import ResNetConv

__all__ = ["coupling_conditioner"]


def coupling_conditioner(
    mask: torch.Tensor,
    num_params: int,
    hidden_dims: Sequence[int],
    hidden_channels: int,
    num_blocks: int,
    context_dim: int | None,
) -> nn.Module:
    """The network from the kept part of a coupling's input (and a context) to ``num_params``
    parameters per transformed element: an MLP for a vector mask, a residual conv net for an
    image mask (its width and depth checked here; vectors ignore them). ``context_dim`` is
    ``None`` for an unconditional coupling; a conditional one's must be a count >= 1 (0 built
    a "conditional" coupling whose network never read the context).

    Example:
        >>> from pyro_gen.transforms.masks import checkerboard_mask
        >>> net = coupling_conditioner(checkerboard_mask(1, 4, 4), 2, (), 8, 1, None)
        >>> net(torch.randn(3, 1, 4, 4)).shape
        torch.Size([3, 2, 4, 4])
    """
    context_dim = 0 if context_dim is None else check_count("context_dim", context_dim)
    first = mask.reshape(mask.shape[0], -1)
    split = bool((first == first[:, :1]).all())
    n_cond = int(first[:, 0].sum()) if split else mask.shape[0]
    n_out = (mask.shape[0] - n_cond if split else mask.shape[0]) * num_params
    if mask.dim() == 1:
        return MLP(n_cond, hidden_dims, n_out, context_dim=context_dim, zero_init_output=True)
    width = check_count("hidden_channels", hidden_channels)
    blocks = check_count("num_blocks", num_blocks, minimum=0)
    return ResNetConv(n_cond, width, n_out, blocks, context_dim=context_dim)
