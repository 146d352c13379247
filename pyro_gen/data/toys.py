"""Seeded samplers of the 2D toy densities used to visualise density estimators.

Each sampler draws ``num_samples`` float32 points of shape ``(num_samples, 2)`` from a
:class:`torch.Generator` on the CPU, so a given seed gives the same points on every
machine. Through :func:`load_toy` the train and test splits use different streams:
the generator is seeded with ``2 * seed`` for ``train`` and ``2 * seed + 1`` for
``test``, so the two splits never repeat each other for any ``seed``.

The shapes and scales follow FFJORD's toy data (all roughly within [-4, 4]^2).

References:
    W. Grathwohl, R. T. Q. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud, "FFJORD:
    Free-form Continuous Dynamics for Scalable Reversible Generative Models",
    arXiv:1810.01367.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable

import numpy as np
import torch

from pyro_gen.data.idx_dataset import check_split

DEFAULT_NUM_SAMPLES = 10_000

Sampler = Callable[[int, torch.Generator], torch.Tensor]


def _randn(n: int, g: torch.Generator, d: int = 2) -> torch.Tensor:
    return torch.randn(n, d, generator=g)


def _rand(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g)


def _shuffle(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x[torch.randperm(x.shape[0], generator=g)]


# Eight Gaussians: modes at radius _EG_RADIUS, noise std _EG_NOISE, then everything
# divided by _EG_SHRINK. Both the sampler and toy_log_prob read these.
_EG_MODES, _EG_RADIUS, _EG_NOISE, _EG_SHRINK = 8, 4.0, 0.5, math.sqrt(2)


def _eight_gaussians_centers(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    angles = torch.arange(_EG_MODES, dtype=dtype) * (2 * math.pi / _EG_MODES)
    return _EG_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=-1)


def eight_gaussians(num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Eight Gaussians (std 0.35) with means evenly spaced on a circle of radius 2.83."""
    centers = _eight_gaussians_centers()
    which = torch.randint(0, _EG_MODES, (num_samples,), generator=generator)
    return (centers[which] + _EG_NOISE * _randn(num_samples, generator)) / _EG_SHRINK


def moons(num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Two interleaving half circles ("two moons") with Gaussian noise of std 0.2."""
    n_outer = num_samples // 2
    t = math.pi * _rand(num_samples, generator)
    outer = torch.stack([t.cos(), t.sin()], dim=-1)
    inner = torch.stack([1 - t.cos(), 0.5 - t.sin()], dim=-1)
    x = torch.where((torch.arange(num_samples) < n_outer)[:, None], outer, inner)
    x = 2 * x + torch.tensor([-1.0, -0.2]) + 0.2 * _randn(num_samples, generator)
    return _shuffle(x, generator)


# Checkerboard: unit cells over [-_CB_HALF, _CB_HALF)^2, black where the cell indices sum
# to an even number, then scaled by _CB_SCALE. Both the sampler and toy_log_prob read these.
_CB_HALF, _CB_SCALE = 2, 2.0


def checkerboard(num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform on the eight black squares of a 4x4 checkerboard over [-4, 4]^2."""
    x1 = 2 * _CB_HALF * _rand(num_samples, generator) - _CB_HALF
    x2 = _rand(num_samples, generator) - 2 * torch.randint(
        0, _CB_HALF, (num_samples,), generator=generator
    )
    x2 = x2 + torch.floor(x1) % 2
    return _CB_SCALE * torch.stack([x1, x2], dim=-1)


def rings(num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Four concentric circles (radii 0.75, 1.5, 2.25, 3) with Gaussian noise of std 0.08."""
    radius = 0.75 * (torch.arange(num_samples) % 4 + 1).float()
    t = 2 * math.pi * _rand(num_samples, generator)
    x = radius[:, None] * torch.stack([t.cos(), t.sin()], dim=-1)
    return _shuffle(x + 0.08 * _randn(num_samples, generator), generator)


def spirals(num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Two interleaved spiral arms (1.5 turns each) with Gaussian noise of std 0.1."""
    t = _rand(num_samples, generator).sqrt() * (3 * math.pi)
    arm = torch.stack([-t.cos() * t, t.sin() * t], dim=-1)
    arm = arm + 0.5 * torch.rand(num_samples, 2, generator=generator)
    sign = torch.where(torch.arange(num_samples) % 2 == 0, 1.0, -1.0)[:, None]
    x = sign * arm / 3 + 0.1 * _randn(num_samples, generator)
    return _shuffle(x, generator)


def pinwheel(num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Five curved blades of a pinwheel (radial std 0.3, tangential std 0.1)."""
    num_blades, rate = 5, 0.25
    blade = torch.arange(num_samples) % num_blades
    features = _randn(num_samples, generator) * torch.tensor([0.3, 0.1])
    features[:, 0] += 1.0
    angles = blade * (2 * math.pi / num_blades) + rate * features[:, 0].exp()
    cos, sin = angles.cos(), angles.sin()
    rotations = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    x = 2 * torch.einsum("ti,tij->tj", features, rotations)
    return _shuffle(x, generator)


TOYS: dict[str, Sampler] = {
    "eight_gaussians": eight_gaussians,
    "moons": moons,
    "checkerboard": checkerboard,
    "rings": rings,
    "spirals": spirals,
    "pinwheel": pinwheel,
}


def load_toy(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
) -> tuple[torch.Tensor, None]:
    """Draw a split of a 2D toy density: float32 points ``(num_samples, 2)`` and no labels.

    Args:
        name: one of :data:`TOYS`.
        split: ``"train"`` or ``"test"``; they use seeds ``2 * seed`` and ``2 * seed + 1``.
        root: ignored (nothing is stored); accepted for a uniform API.
        num_samples: number of points.
        seed: base seed.

    Example:
        >>> x, y = load_toy("moons", num_samples=5)
        >>> x.shape, x.dtype, y
        (torch.Size([5, 2]), torch.float32, None)
        >>> bool((load_toy("moons", "test", num_samples=5)[0] != x).all())
        True
    """
    check_split(split)
    if name not in TOYS:
        raise ValueError(f"unknown toy dataset {name!r}; valid names: {', '.join(TOYS)}")
    for arg, value in (("num_samples", num_samples), ("seed", seed)):
        # a whole number: int() truncated 10.5 points to 10 and failed on None inside torch
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{arg} must be a whole number; got {value!r}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be non-negative; got {num_samples}")
    generator = torch.Generator().manual_seed(2 * int(seed) + (split == "test"))
    return TOYS[name](int(num_samples), generator).to(torch.float32).contiguous(), None


def _eight_gaussians_log_prob(x: torch.Tensor) -> torch.Tensor:
    # centres computed in float32 and cast gave float64 points a log density off by 3e-6
    centers = (_eight_gaussians_centers(torch.float64) / _EG_SHRINK).to(x)
    var = (_EG_NOISE / _EG_SHRINK) ** 2
    sq = (x[..., None, :] - centers).pow(2).sum(-1)
    return torch.logsumexp(-0.5 * sq / var, -1) - math.log(2 * math.pi * var * _EG_MODES)


def _checkerboard_log_prob(x: torch.Tensor) -> torch.Tensor:
    u = x / _CB_SCALE
    # The closed squares: float32 rounding in the sampler can land a point exactly on an
    # outer edge of a black square (e.g. x2 = 4.0), which must not score -inf.
    lo, hi = torch.floor(u), torch.ceil(u) - 1
    inside = torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
    for a in (lo[..., 0], hi[..., 0]):
        for b in (lo[..., 1], hi[..., 1]):
            cell = torch.stack([a, b])
            in_range = ((cell >= -_CB_HALF) & (cell < _CB_HALF)).all(0)
            inside |= in_range & ((a + b) % 2 == 0)
    num_black = (2 * _CB_HALF) ** 2 // 2
    log_density = -math.log(num_black * _CB_SCALE**2)
    return torch.where(inside, log_density, -math.inf).to(x.dtype)


_LOG_PROBS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "eight_gaussians": _eight_gaussians_log_prob,
    "checkerboard": _checkerboard_log_prob,
}


def _as_points(x: object) -> torch.Tensor:
    """``x`` as a tensor: numpy points (a model sampled in numpy or JAX) failed with
    "'numpy.ndarray' object has no attribute 'is_floating_point'", and Predictive's dict
    with "'dict' object has no attribute 'shape'"."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, dict):
        raise TypeError(
            f"toy_log_prob: x must be points (..., 2), got a dict with sites {sorted(x)} "
            "(pyro.infer.Predictive's output): pass the one site, e.g. x['x']"
        )
    raise TypeError(f"toy_log_prob: x must be a tensor or numpy array, got {type(x).__name__}")


def toy_log_prob(name: str, x: torch.Tensor) -> torch.Tensor:
    r"""Exact log density of a 2D toy whose density has a closed form.

    * ``eight_gaussians``: an equal-weight mixture of isotropic Gaussians,
      :math:`p(x) = \frac{1}{8} \sum_{k=0}^{7} \mathcal{N}(x \mid c_k, \sigma^2 I)` with
      :math:`c_k = 2\sqrt{2}\,(\cos(k\pi/4), \sin(k\pi/4))` and
      :math:`\sigma = 0.5/\sqrt{2}`.
    * ``checkerboard``: uniform on the eight black 2x2 squares of :math:`[-4, 4]^2`,
      :math:`p(x) = \frac{1}{32}\,\mathbb{1}[x \in \text{black squares}]`, so
      :math:`\log p = -\log 32` inside and :math:`-\infty` outside (square edges count
      as inside).

    The constants are the ones the samplers in this module draw with, so
    ``toy_log_prob(name, load_toy(name)[0])`` is the log density of those very points.

    Args:
        name: ``"eight_gaussians"`` or ``"checkerboard"``.
        x: points of shape ``(..., 2)`` (leading dims such as ``pyro.infer.Predictive``'s
            ``num_samples`` are kept), any dtype and device, a tensor or numpy array.

    Returns:
        :math:`\log p(x)` of shape ``x.shape[:-1]``, in ``x``'s dtype (the default float
        dtype for integer points) and device.

    Raises:
        ValueError: for an unknown name, a toy without a closed-form density (moons,
            rings, spirals, pinwheel), or ``x`` whose last dimension is not 2.

    Example:
        >>> toy_log_prob("checkerboard", torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        tensor([-3.4657,    -inf])
        >>> x, _ = load_toy("eight_gaussians", num_samples=20_000)
        >>> round(-toy_log_prob("eight_gaussians", x).mean().item(), 1)  # entropy, nats
        2.8
    """
    # load() takes "eight-gaussians"; toy_log_prob refused the name load had just accepted
    name = name.lower().replace("-", "_") if isinstance(name, str) else name
    if name not in TOYS:
        raise ValueError(f"unknown toy dataset {name!r}; valid names: {', '.join(TOYS)}")
    if name not in _LOG_PROBS:
        raise ValueError(
            f"toy dataset {name!r} has no closed-form density; "
            f"toy_log_prob supports: {', '.join(_LOG_PROBS)}"
        )
    x = _as_points(x)
    if x.shape[-1:] != (2,):
        raise ValueError(f"x must have shape (..., 2); got {tuple(x.shape)}")
    # integer points truncated the mode centres to integers (eight_gaussians at (0, 0) gave
    # -16.45 for -31.76) and the checkerboard's log density to -3
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    return _LOG_PROBS[name](x)
