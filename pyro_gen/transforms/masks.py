"""Binary masks for coupling layers.

Convention for every mask here: ``True`` marks the *conditioning* elements, which a
coupling layer passes through unchanged and feeds to its conditioner; ``False`` marks
the elements it transforms. Alternate ``parity`` between consecutive layers so every
element gets transformed.
"""

from __future__ import annotations

import torch


def _too_small(dim: int) -> str:
    # a 1-D variable (Pyro's tutorial conditions x2 on x1 with one dim each) cannot be split;
    # say what takes its place rather than only what is wrong
    return (
        f"a coupling mask needs dim >= 2 (one part is kept, the other transformed), got {dim}; "
        f"for a 1-D variable use spline_autoregressive(1) or "
        f"conditional_spline_autoregressive(1, context_dim), which have no split"
    )


def alternating_mask(dim: int, parity: int = 0) -> torch.Tensor:
    """Alternating (even/odd) mask for vectors, as in NICE.

    Args:
        dim: vector length.
        parity: 0 keeps even positions fixed, 1 keeps odd positions fixed.

    Returns:
        Bool tensor of shape ``(dim,)``.

    Example:
        >>> alternating_mask(5).int().tolist()
        [1, 0, 1, 0, 1]
    """
    if dim < 2:
        raise ValueError(_too_small(dim))
    return torch.arange(dim) % 2 == parity % 2


def half_mask(dim: int, parity: int = 0) -> torch.Tensor:
    """Contiguous split mask (first half fixed), the split Pyro's ``AffineCoupling`` uses.

    Contiguous masks let :class:`~pyro_gen.transforms.Coupling` use slicing instead of
    gathers, the fastest layout for vectors.

    Args:
        dim: vector length.
        parity: 0 keeps the first ``ceil(dim/2)`` entries fixed, 1 keeps the rest fixed.

    Returns:
        Bool tensor of shape ``(dim,)``.

    Example:
        >>> half_mask(5).int().tolist()
        [1, 1, 1, 0, 0]
    """
    if dim < 2:
        raise ValueError(_too_small(dim))
    mask = torch.arange(dim) < (dim + 1) // 2
    return mask if parity % 2 == 0 else ~mask


def checkerboard_mask(channels: int, height: int, width: int, parity: int = 0) -> torch.Tensor:
    """Spatial checkerboard mask for images (RealNVP), the same in every channel.

    Args:
        channels: number of channels ``C``.
        height: image height ``H``.
        width: image width ``W``.
        parity: which colour of the board is kept fixed.

    Returns:
        Bool tensor of shape ``(C, H, W)``.

    Example:
        >>> checkerboard_mask(1, 2, 3)[0].int().tolist()
        [[1, 0, 1], [0, 1, 0]]
    """
    if height * width < 2:
        raise ValueError("a checkerboard mask needs at least two pixels")
    ij = torch.arange(height)[:, None] + torch.arange(width)[None, :]
    board = ij % 2 == parity % 2
    return board.expand(channels, height, width).clone()


def channel_mask(channels: int, height: int, width: int, parity: int = 0) -> torch.Tensor:
    """Channel-wise mask for images (RealNVP after squeezing, Glow): half the channels fixed.

    Args:
        channels: number of channels ``C`` (at least 2).
        height: image height ``H``.
        width: image width ``W``.
        parity: 0 keeps the first ``ceil(C/2)`` channels fixed, 1 keeps the rest fixed.

    Returns:
        Bool tensor of shape ``(C, H, W)``.

    Example:
        >>> channel_mask(4, 1, 1, parity=1).flatten().int().tolist()
        [0, 0, 1, 1]
    """
    if channels < 2:
        raise ValueError(f"a channel mask needs at least 2 channels, got {channels}")
    keep = half_mask(channels, parity)
    return keep[:, None, None].expand(channels, height, width).clone()


def _as_slice(idx: torch.Tensor) -> slice | None:
    """``idx`` as a strided slice (start, stop, step) when it is an arithmetic progression."""
    n = idx.numel()
    if n == 0:
        return None
    start = int(idx[0])
    step = int(idx[1] - idx[0]) if n > 1 else 1
    if step > 0 and torch.equal(idx, torch.arange(start, start + step * n, step)):
        return slice(start, start + step * (n - 1) + 1, step)
    return None


class MaskLayout:
    """How a mask splits the input, computed once on the CPU (host syncs happen here only).

    ``split``: the mask depends only on the first event dim, so the layer works on index
    sets ``cond_idx``/``trans_idx`` along it (as strided slices when possible: alternating
    and half masks become views instead of gathers).
    """

    def __init__(self, mask: torch.Tensor) -> None:
        mask = mask.detach().cpu().bool()
        # kept as ints: a layout is reused by ``condition``, which may run under
        # torch.jit.trace, where a buffer's ``.shape`` holds tensors
        self.event_shape = tuple(int(s) for s in mask.shape)
        if bool(mask.all()) or not bool(mask.any()):
            raise ValueError("a coupling mask must contain both kept and transformed elements")
        first = mask.reshape(mask.shape[0], -1)
        self.split = bool((first == first[:, :1]).all())
        self.cond_idx = self.trans_idx = self.cond_slice = self.trans_slice = None
        if self.split:
            keep = first[:, 0]
            self.cond_idx = torch.nonzero(keep).flatten()
            self.trans_idx = torch.nonzero(~keep).flatten()
            self.cond_slice = _as_slice(self.cond_idx)
            self.trans_slice = _as_slice(self.trans_idx)
