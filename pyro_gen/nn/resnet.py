"""Small residual convolutional conditioner for image coupling layers."""

from __future__ import annotations

import torch
from torch import nn

from pyro_gen.nn.arguments import check_count
from pyro_gen.nn.mlp import broadcast_context


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size, padding=pad),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


class ResNetConv(nn.Module):
    r"""Residual conv net :math:`(C_\text{in}, H, W) \to (C_\text{out}, H, W)`.

    Same-padding convolutions, no normalization layers: batch statistics inside a
    conditioner would make each example's output depend on the rest of the batch, which
    breaks invertibility of the coupling layer. The last convolution is zero-initialised
    by default so that a coupling layer built on it starts at the identity (Glow).
    Any batch shape is accepted (batch dims are flattened for the convolutions).

    Args:
        in_channels: input channels.
        hidden_channels: width of the residual trunk.
        out_channels: output channels.
        num_blocks: number of residual blocks.
        kernel_size: spatial kernel size (odd).
        context_dim: size of an optional context vector, added per channel after the
            first convolution (class conditioning).
        zero_init_output: zero the last convolution.

    References:
        He et al., Deep Residual Learning for Image Recognition, arXiv:1512.03385.
        Dinh et al., Density estimation using Real NVP, arXiv:1605.08803.

    Example:
        >>> net = ResNetConv(2, 8, 4, num_blocks=1)
        >>> net(torch.randn(3, 2, 4, 4)).shape
        torch.Size([3, 4, 4, 4])
        >>> bool(net(torch.randn(2, 4, 4)).abs().max() == 0)  # zero-initialised output
        True
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_blocks: int = 2,
        *,
        kernel_size: int = 3,
        context_dim: int = 0,
        zero_init_output: bool = True,
    ) -> None:
        super().__init__()
        in_channels = check_count("in_channels", in_channels)
        hidden_channels = check_count("hidden_channels", hidden_channels)
        out_channels = check_count("out_channels", out_channels)
        num_blocks = check_count("num_blocks", num_blocks, minimum=0)
        context_dim = check_count("context_dim", context_dim, minimum=0)
        if check_count("kernel_size", kernel_size) % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.context_dim = context_dim
        pad = kernel_size // 2
        self.conv_in = nn.Conv2d(in_channels, hidden_channels, kernel_size, padding=pad)
        self.context = nn.Linear(context_dim, hidden_channels) if context_dim else None
        self.blocks = nn.Sequential(
            *[_ResidualBlock(hidden_channels, kernel_size) for _ in range(num_blocks)]
        )
        self.conv_out = nn.Conv2d(hidden_channels, out_channels, kernel_size, padding=pad)
        if zero_init_output:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() < 3 or x.shape[-3] != self.in_channels:
            raise ValueError(
                f"ResNetConv expected (..., {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if self.context is not None:
            if context is None:
                raise ValueError("this ResNetConv was built with context_dim > 0; pass a context")
            context = broadcast_context(x, context, 3)
            x = x.expand(context.shape[:-1] + x.shape[-3:])
        elif context is not None:
            raise ValueError("context given to a ResNetConv built with context_dim=0")
        batch = x.shape[:-3]
        h = self.conv_in(x.reshape((-1,) + x.shape[-3:]))
        if self.context is not None:
            h = h + self.context(context.reshape(-1, self.context_dim))[:, :, None, None]
        h = self.conv_out(torch.relu(self.blocks(h)))
        return h.reshape(batch + h.shape[-3:])
