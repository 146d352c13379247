"""A small U-Net with ResNet blocks and optional self-attention, for 28x28-sized images."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyro_gen.nn.time_embedding import SinusoidalTimeEmbedding, add_label, label_table

__all__ = ["UNet"]


def _norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, time embedding added in between, 1x1 skip when widths
    differ."""

    def __init__(self, c_in: int, c_out: int, time_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class Attention(nn.Module):
    """Single-head self-attention over spatial positions, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(h.transpose(1, 2).reshape(B, C, H, W))


def _whole(value: object, least: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def check_unet_arguments(
    in_channels: object,
    base_channels: object,
    channel_mults: object,
    num_res_blocks: object,
    attention_levels: object,
    out_channels: object,
    num_classes: object,
) -> None:
    """Refuses, when the U-Net is built, what it used to accept and misbuild or fail on
    later, naming the argument: ``in_channels=0`` (a network of empty convolutions), an odd
    ``base_channels`` (then "embedding dim must be even"), ``channel_mults=()``
    (``ZeroDivisionError``) or with a 0 (empty levels), and an ``attention_levels`` entry
    beyond the levels (wrapped silently onto another level).

    Example:
        >>> check_unet_arguments(1, 8, (1, 2), 1, (5,), None, None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: attention_levels must be level indices in [-2, 2) for 2 levels ...
    """
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if value is not None and not _whole(value, 1):
            raise ValueError(f"{name} must be a positive whole number of channels, got {value!r}")
    if not _whole(base_channels, 2) or base_channels % 2:
        raise ValueError(
            "base_channels must be an even whole number >= 2 (it is also the width of the "
            f"sinusoidal time embedding, which pairs sines with cosines), got {base_channels!r}"
        )
    if (
        not isinstance(channel_mults, Sequence)
        or isinstance(channel_mults, str)
        or not channel_mults
        or not all(_whole(m, 1) for m in channel_mults)
    ):
        raise ValueError(
            "channel_mults must be a non-empty sequence of positive whole width multipliers, "
            f"one per level (e.g. (1, 2, 2)), got {channel_mults!r}"
        )
    if not _whole(num_res_blocks, 0):
        raise ValueError(f"num_res_blocks must be a whole number >= 0, got {num_res_blocks!r}")
    n = len(channel_mults)
    levels = list(attention_levels) if isinstance(attention_levels, Sequence) else [None]
    if not all(isinstance(lvl, numbers.Integral) and -n <= lvl < n for lvl in levels):
        raise ValueError(
            f"attention_levels must be level indices in [{-n}, {n}) for {n} levels "
            f"(len(channel_mults)), got {attention_levels!r}"
        )
    if num_classes is not None and not _whole(num_classes, 1):
        raise ValueError(f"num_classes must be a positive whole number, got {num_classes!r}")


class UNet(nn.Module):
    """U-Net :math:`\\epsilon_\\theta(x_t, t)` for images ``(B, C, H, W)``.

    Each resolution has ``num_res_blocks`` ResNet blocks (time embedding added inside), the
    resolution halves between levels (stride-2 conv) and doubles on the way up (nearest
    upsampling + conv), with skip connections; self-attention follows each block of the
    levels listed in ``attention_levels`` (the middle block always has it). H and W must be
    divisible by ``2 ** (len(channel_mults) - 1)``. Extra leading batch dims
    (``(K, B, C, H, W)``) are accepted, and ``t`` may be one time for the whole batch.

    Args:
        in_channels: image channels.
        base_channels: width at full resolution.
        channel_mults: width multipliers per level (28x28 with ``(1, 2, 2)``: 28, 14, 7).
        num_res_blocks: ResNet blocks per level.
        attention_levels: level indices (0 = full resolution, negative from the end) whose
            blocks get self-attention; the default ``(-1,)`` is the lowest resolution.
        out_channels: output channels (default ``in_channels``; twice that for learned
            variances).
        dropout: dropout in the ResNet blocks.
        num_classes: when given, ``forward(x, t, y)`` takes integer labels ``y`` in
            ``[0, num_classes)`` whose learned embedding joins the time embedding (a
            class-conditional network: ``model(x, y=labels)``).

    References:
        Ronneberger, Fischer, Brox. U-Net. arXiv:1505.04597. Ho, Jain, Abbeel. Denoising
        Diffusion Probabilistic Models. arXiv:2006.11239.

    Example:
        >>> net = UNet(1, base_channels=8, channel_mults=(1, 2), attention_levels=(1,))
        >>> net(torch.randn(2, 1, 8, 8), torch.tensor([1, 7])).shape
        torch.Size([2, 1, 8, 8])
        >>> net(torch.randn(3, 2, 1, 8, 8), torch.tensor(5)).shape  # particles, one time
        torch.Size([3, 2, 1, 8, 8])
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (-1,),
        out_channels: int | None = None,
        dropout: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        check_unet_arguments(
            in_channels,
            base_channels,
            channel_mults,
            num_res_blocks,
            attention_levels,
            out_channels,
            num_classes,
        )
        self.in_channels = in_channels
        self.factor = 2 ** (len(channel_mults) - 1)
        n_levels = len(channel_mults)
        attn_levels = {lvl % n_levels for lvl in attention_levels}
        time_dim = 4 * base_channels
        self.embed = SinusoidalTimeEmbedding(base_channels, time_dim)
        self.label = label_table(num_classes, time_dim)
        self.inp = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        widths = [base_channels * m for m in channel_mults]
        self.down = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = base_channels
        skips = [c]
        for level, w in enumerate(widths):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(c, w, time_dim, dropout))
                attns.append(Attention(w) if level in attn_levels else nn.Identity())
                c = w
                skips.append(c)
            self.down.append(blocks)
            self.down_attn.append(attns)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1 = ResBlock(c, c, time_dim, dropout)
        self.mid_attn = Attention(c)
        self.mid2 = ResBlock(c, c, time_dim, dropout)
        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(c + skips.pop(), w, time_dim, dropout))
                attns.append(Attention(w) if level in attn_levels else nn.Identity())
                c = w
            self.up.append(blocks)
            self.up_attn.append(attns)
            if level > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.out_norm = _norm(c)
        # The fewest channels per group among the norms at the lowest resolution: at 1x1
        # one channel a group leaves one value to normalize, which GroupNorm refuses.
        lowest = [self.down[-1], self.down_attn[-1], self.mid1, self.mid_attn, self.mid2]
        lowest += [self.up[0], self.up_attn[0]]
        self._lowest_per_group = min(
            n.num_channels // n.num_groups
            for part in lowest
            for n in part.modules()
            if isinstance(n, nn.GroupNorm)
        )
        self.out = nn.Conv2d(c, in_channels if out_channels is None else out_channels, 3, padding=1)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        if x.dim() < 4 or x.shape[-3] != self.in_channels:
            raise ValueError(
                f"UNet expects (..., {self.in_channels}, H, W) with at least one batch dim, got "
                f"{tuple(x.shape)}"
            )
        # Leading batch dims (vectorized particles, (K, B, C, H, W)) are flattened for the
        # convolutions, as ResNetConv and TimeMLP accept them; one time for the whole batch
        # (a sampler's step) is broadcast, as TimeMLP broadcasts it.
        batch = x.shape[:-3]
        if not isinstance(t, torch.Tensor):  # a Python number (a tensor stays traceable)
            t = torch.as_tensor(t, device=x.device)
        try:
            t = t.expand(batch)
        except RuntimeError:
            raise ValueError(
                f"UNet's times t must be one per example (batch shape {tuple(batch)}) or one "
                f"for the batch, got shape {tuple(t.shape)}"
            ) from None
        if y is not None and y.shape == batch:
            y = y.reshape(-1)
        out = self._forward(x.reshape((-1,) + x.shape[-3:]), t.reshape(-1), y)
        return out.reshape(batch + out.shape[-3:])

    def _forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        H, W = x.shape[-2:]
        if H % self.factor or W % self.factor:
            raise ValueError(
                f"image size {H}x{W} is not divisible by {self.factor} "
                f"(2 ** (len(channel_mults) - 1)); pad the images or use fewer levels"
            )
        if self._lowest_per_group * (H // self.factor) * (W // self.factor) < 2:
            raise ValueError(
                f"at {H}x{W} the U-Net's lowest level is {H // self.factor}x{W // self.factor} "
                f"with {self._lowest_per_group} channel per GroupNorm group, one value to "
                "normalize: use a larger base_channels or fewer levels (channel_mults)"
            )
        emb = add_label(self.embed(t), self.label, y, "UNet")
        h = self.inp(x)
        hs = [h]
        for level, (blocks, attns) in enumerate(zip(self.down, self.down_attn)):
            for block, attn in zip(blocks, attns):
                h = attn(block(h, emb))
                hs.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for i, (blocks, attns) in enumerate(zip(self.up, self.up_attn)):
            for block, attn in zip(blocks, attns):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))
