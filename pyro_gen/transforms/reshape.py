"""Reshaping bijections for image flows: squeeze (space-to-depth) and multi-scale factor-out."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.distributions import ComposeTransform, Transform

from pyro_gen.transforms._base import FlowTransformModule, as_event_shape, modules_of


def _space_to_depth(x: torch.Tensor, f: int) -> torch.Tensor:
    *batch, c, h, w = x.shape
    x = x.reshape(*batch, c, h // f, f, w // f, f)
    n = len(batch)
    x = x.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)
    # contiguous: with W == f the reshape is a strided view, and torch transforms after this
    # one .view() it (AffineTransform's log-det)
    return x.reshape(*batch, c * f * f, h // f, w // f).contiguous()


def _depth_to_space(x: torch.Tensor, f: int) -> torch.Tensor:
    *batch, c, h, w = x.shape
    n = len(batch)
    x = x.reshape(*batch, c // (f * f), f, f, h, w)
    x = x.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return x.reshape(*batch, c // (f * f), h * f, w * f).contiguous()


class Squeeze(FlowTransformModule):
    r"""Space-to-depth: :math:`(C, H, W) \to (4C, H/2, W/2)` (RealNVP, Glow); volume preserving.

    Each 2x2 spatial block becomes 4 channels; input channel :math:`c` goes to output
    channels :math:`4c, \dots, 4c+3`. In a Pyro transform list (base to data) the map
    from a squeezed latent to the image is the *inverse*, :class:`Unsqueeze`.

    Args:
        event_shape: input ``(C, H, W)`` with even ``H`` and ``W``.
        factor: block size (2).
        cache_size: 0 (default) or 1.

    References:
        Dinh et al., Density estimation using Real NVP, arXiv:1605.08803.

    Example:
        >>> Squeeze((1, 4, 4))(torch.arange(16.0).reshape(1, 4, 4))[:, 0, 0].tolist()
        [0.0, 1.0, 4.0, 5.0]
    """

    def __init__(self, event_shape: Sequence[int], factor: int = 2, *, cache_size: int = 0) -> None:
        shape = as_event_shape(event_shape)
        if len(shape) != 3:
            raise ValueError(f"Squeeze needs an image event shape (C, H, W), got {shape}")
        c, h, w = shape
        if h % factor or w % factor:
            raise ValueError(f"Squeeze by {factor} needs H and W divisible by it, got {shape}")
        out = (c * factor * factor, h // factor, w // factor)
        super().__init__(shape, out, cache_size=cache_size)
        self.factor = factor

    def _forward(self, x):
        return _space_to_depth(x, self.factor), x.new_zeros(x.shape[:-3])

    def _backward(self, y):
        return _depth_to_space(y, self.factor), y.new_zeros(y.shape[:-3])


class Unsqueeze(FlowTransformModule):
    r"""Depth-to-space: :math:`(C, H, W) \to (C/4, 2H, 2W)`, the inverse of :class:`Squeeze`.

    Args:
        event_shape: input ``(C, H, W)`` with ``C`` divisible by ``factor**2``.
        factor: block size (2).
        cache_size: 0 (default) or 1.

    Example:
        >>> x = torch.randn(3, 2, 4, 4)
        >>> torch.equal(Unsqueeze((8, 2, 2))(Squeeze((2, 4, 4))(x)), x)
        True
    """

    def __init__(self, event_shape: Sequence[int], factor: int = 2, *, cache_size: int = 0) -> None:
        shape = as_event_shape(event_shape)
        if len(shape) != 3 or shape[0] % (factor * factor):
            raise ValueError(f"Unsqueeze needs (C, H, W) with C divisible by {factor**2}: {shape}")
        c, h, w = shape
        out = (c // (factor * factor), h * factor, w * factor)
        super().__init__(shape, out, cache_size=cache_size)
        self.factor = factor

    def _forward(self, x):
        return _depth_to_space(x, self.factor), x.new_zeros(x.shape[:-3])

    def _backward(self, y):
        return _space_to_depth(y, self.factor), y.new_zeros(y.shape[:-3])


def _parts(level: Transform | Sequence[Transform]) -> list[Transform]:
    if isinstance(level, ComposeTransform):
        return list(level.parts)
    if isinstance(level, Transform):
        return [level]
    return list(level)


class MultiScale(FlowTransformModule):
    r"""Multi-scale architecture with factor-out (RealNVP), as one bijection flat latent -> image.

    Read in the density direction (data to latent, the inverse of this transform): level
    :math:`i` maps its input :math:`h_i` through its own flow, then half of the resulting
    channels :math:`z_i` leave (are *factored out*) and only the other half continues to
    level :math:`i+1`; the last level keeps everything. The latent is the concatenation
    of the flattened factored-out parts,

    .. math::

        z = \big[\operatorname{vec}(z_1), \dots, \operatorname{vec}(z_{L-1}),
        \operatorname{vec}(h_L')\big] \in \mathbb{R}^{C H W},
        \qquad \log|\det J| = \textstyle\sum_i \log|\det J_i|,

    so the whole thing is a single bijection from a flat vector of size :math:`CHW` (the
    domain, event shape ``(C*H*W,)``) to the image (the codomain, ``(C, H, W)``). The
    factored-out parts are modelled by the base distribution: put a standard
    ``Normal`` over ``(C*H*W,)`` under it (see :class:`pyro_gen.distributions.Flow`).

    Each level is a transform or list of transforms in Pyro's order (base to data) whose
    output event shape is that level's input shape; it may change the shape (put an
    :class:`Unsqueeze` last to squeeze in the density direction). Parts are called one
    by one, so each part's own caches give its log-determinant without recomputation.

    Args:
        image_shape: data event shape ``(C, H, W)``.
        levels: one transform (or list) per level, finest level first.
        split: fraction of channels that continue to the next level (RealNVP: 1/2).
        cache_size: 0 (default) or 1 for the whole map (each part keeps its own cache).

    References:
        Dinh et al., Density estimation using Real NVP, arXiv:1605.08803.
        Kingma and Dhariwal, Glow, arXiv:1807.03039.

    Example:
        >>> from pyro_gen.transforms import affine_coupling
        >>> ms = multi_scale(
        ...     (1, 4, 4),
        ...     lambda shape, last: [affine_coupling(shape, mask="channel", hidden_channels=4)],
        ...     num_levels=2,
        ... )
        >>> z = torch.randn(3, 16)
        >>> x = ms(z)
        >>> x.shape, torch.allclose(ms.inv(x), z, atol=1e-5)
        (torch.Size([3, 1, 4, 4]), True)
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        levels: Sequence[Transform | Sequence[Transform]],
        *,
        split: float = 0.5,
        cache_size: int = 0,
    ) -> None:
        image_shape = as_event_shape(image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"MultiScale needs an image shape (C, H, W), got {image_shape}")
        numel = image_shape[0] * image_shape[1] * image_shape[2]
        super().__init__((numel,), image_shape, cache_size=cache_size)
        self.image_shape = image_shape
        self._levels = [_parts(level) for level in levels]
        if not self._levels:
            raise ValueError("MultiScale needs at least one level")
        self.parts = nn.ModuleList(
            [m for parts in self._levels for p in parts for m in modules_of(p)]
        )
        # shapes: data-side input of each level, its latent-side shape, what continues
        self.level_shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.factored_shapes: list[tuple[int, ...]] = []
        shape = image_shape
        for i, parts in enumerate(self._levels):
            inner = tuple(ComposeTransform(parts).inverse_shape(shape))
            if len(inner) != 3:
                raise ValueError(f"level {i} must map images to images, got latent {inner}")
            self.level_shapes.append((shape, inner))
            if i < len(self._levels) - 1:
                keep = math.ceil(inner[0] * split)
                if not 0 < keep < inner[0]:
                    raise ValueError(f"level {i} has {inner[0]} channels; cannot factor out")
                self.factored_shapes.append((inner[0] - keep, *inner[1:]))
                shape = (keep, *inner[1:])
            else:
                self.factored_shapes.append(inner)
        self._sizes = [c * h * w for c, h, w in self.factored_shapes]

    def clear_cache(self) -> None:
        """Clears this map's caches and those of every part (see
        :meth:`FlowTransformModule.clear_cache`)."""
        super().clear_cache()
        for parts in self._levels:
            for part in parts:
                part.clear_cache()

    @staticmethod
    def _flat_ladj(ladj: torch.Tensor, batch_dims: int) -> torch.Tensor:
        # sums the event dims; reshape(batch + (-1,)) cannot infer -1 for an empty batch,
        # and sum(()) would sum every dim
        if ladj.dim() <= batch_dims:
            return ladj
        return ladj.sum(tuple(range(batch_dims, ladj.dim())))

    def _backward(self, y):
        batch = y.shape[:-3]
        nb = len(batch)
        # flatten(-3), not reshape(*batch, -1): -1 is not inferable for an empty batch
        h, ladj, zs = y, y.new_zeros(batch), []
        for i, parts in enumerate(self._levels):
            for part in reversed(parts):
                x = part.inv(h)
                ladj = ladj + self._flat_ladj(part.log_abs_det_jacobian(x, h), nb)
                h = x
            if i < len(self._levels) - 1:
                keep = h.shape[-3] - self.factored_shapes[i][0]
                zs.append(h[..., keep:, :, :].flatten(-3))
                h = h[..., :keep, :, :]
            else:
                zs.append(h.flatten(-3))
        return torch.cat(zs, dim=-1), ladj

    def _forward(self, x):
        batch = x.shape[:-1]
        nb = len(batch)
        zs = x.split(self._sizes, dim=-1)
        ladj = x.new_zeros(batch)
        h = None
        for i in reversed(range(len(self._levels))):
            z = zs[i].reshape(*batch, *self.factored_shapes[i])
            h = z if h is None else torch.cat([h, z], dim=-3)
            for part in self._levels[i]:
                y = part(h)
                ladj = ladj + self._flat_ladj(part.log_abs_det_jacobian(h, y), nb)
                h = y
        return h, ladj


def multi_scale(
    image_shape: Sequence[int],
    level_fn: Callable[[tuple[int, int, int], bool], Sequence[Transform]],
    num_levels: int,
    *,
    squeeze: bool = True,
    cache_size: int = 0,
) -> MultiScale:
    """Builds a :class:`MultiScale` by calling ``level_fn(shape, is_last)`` per level.

    With ``squeeze=True`` every level first squeezes (density direction), so
    ``level_fn`` receives the squeezed shape ``(4C, H/2, W/2)`` and returns the level's
    transforms in Pyro order (an :class:`Unsqueeze` is appended after them). This is the
    Glow layout; RealNVP's checkerboard-before-squeeze layers can be had with
    ``squeeze=False`` and explicit :class:`Unsqueeze` parts.

    Args:
        image_shape: data shape ``(C, H, W)``.
        level_fn: builds the transforms of one level for its (squeezed) shape.
        num_levels: number of levels :math:`L`.
        squeeze: squeeze at the start of every level.
        cache_size: cache of the whole map (see :class:`MultiScale`).

    Example:
        >>> from pyro_gen.transforms import ActNorm
        >>> ms = multi_scale((1, 8, 8), lambda s, last: [ActNorm(s)], num_levels=3)
        >>> [inner for _, inner in ms.level_shapes]
        [(4, 4, 4), (8, 2, 2), (16, 1, 1)]
    """
    shape = as_event_shape(image_shape)
    levels = []
    for i in range(num_levels):
        last = i == num_levels - 1
        if squeeze:
            sq = Squeeze(shape)
            inner = sq.out_shape
            parts = [*level_fn(inner, last), Unsqueeze(inner)]
        else:
            inner = shape
            parts = list(level_fn(inner, last))
            inner = tuple(ComposeTransform(parts).inverse_shape(shape))
        levels.append(parts)
        shape = (inner[0] - inner[0] // 2, *inner[1:])
    return MultiScale(image_shape, levels, cache_size=cache_size)
