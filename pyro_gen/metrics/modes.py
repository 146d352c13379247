"""Mode coverage on mixtures of well-separated isotropic Gaussians (the 2D GAN toys).

A generated sample is *high quality* when it lies within ``n_sigma`` standard deviations
of its nearest mode; a mode is *captured* when at least ``min_count`` high-quality samples
are nearest to it. These are the measures of the 25-Gaussian grid and 8-Gaussian ring
benchmarks of VEEGAN and PacGAN (grid: means on :math:`\\{-4,-2,0,2,4\\}^2`, std 0.05;
ring: eight means on a circle of radius 2, std 0.02).

References:
    Srivastava et al., VEEGAN: Reducing Mode Collapse in GANs using Implicit Variational
    Learning, arXiv:1705.07761. Lin et al., PacGAN: The power of two samples in generative
    adversarial networks, arXiv:1712.04086.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from pyro_gen.metrics.inputs import as_tensor, results_equal
from pyro_gen.nn.arguments import check_count


@dataclass(frozen=True, eq=False)
class ModeCoverage:
    """What :func:`mode_coverage` measured.

    Attributes:
        modes: number of captured modes.
        num_modes: number of modes of the mixture.
        high_quality: share of samples within ``n_sigma`` standard deviations of their
            nearest mode, in [0, 1].
        counts: high-quality samples per mode, shape ``(num_modes,)``.
    """

    modes: int
    num_modes: int
    high_quality: float
    counts: torch.Tensor

    # compares the tensor fields by value (the generated == fails on them)
    __eq__ = results_equal

    def __str__(self) -> str:
        return f"{self.modes}/{self.num_modes} modes, {100 * self.high_quality:.1f}% high quality"


def grid_modes(size: int = 5, spacing: float = 2.0) -> torch.Tensor:
    """Means of the ``size x size`` grid mixture, centred at the origin, shape
    ``(size**2, 2)``; the default is the 25-Gaussian grid on :math:`\\{-4,\\dots,4\\}^2`.

    Example:
        >>> m = grid_modes()
        >>> m.shape, m.min().item(), m.max().item()
        (torch.Size([25, 2]), -4.0, 4.0)
    """
    size = check_count("size", size)  # 0 gave no modes, 2.5 a grid of 3 spaced as 2.5
    axis = (torch.arange(size, dtype=torch.get_default_dtype()) - (size - 1) / 2) * spacing
    return torch.cartesian_prod(axis, axis)


def ring_modes(num_modes: int = 8, radius: float = 2.0) -> torch.Tensor:
    """Means of the ring mixture: ``num_modes`` points evenly spaced on a circle.

    Example:
        >>> ring_modes().norm(dim=-1).allclose(torch.tensor(2.0))
        True
    """
    # 0 failed with ZeroDivisionError, 2.5 gave 3 points spaced for 2.5
    num_modes = check_count("num_modes", num_modes)
    angle = torch.arange(num_modes, dtype=torch.get_default_dtype()) * (2 * math.pi / num_modes)
    return radius * torch.stack([angle.cos(), angle.sin()], -1)


def sample_modes(
    centers: torch.Tensor, std: float, num_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draws from the equal-weight mixture of :math:`\\mathcal{N}(c_k, \\text{std}^2 I)`.

    Example:
        >>> x = sample_modes(ring_modes(), 0.02, 1000, torch.Generator().manual_seed(0))
        >>> print(mode_coverage(x, ring_modes(), 0.02))
        8/8 modes, 99.1% high quality
    """
    centers = as_tensor(centers, "centers", "the modes' means (K, D)")
    # a user's integer grid of modes failed inside randn ("normal_kernel_cpu" not
    # implemented for 'Long')
    if not centers.is_floating_point():
        centers = centers.to(torch.get_default_dtype())
    # torch's "random_ expects 'from' to be less than 'to'" (no centers) and "negative
    # dimension" (num_samples < 0) named neither argument; a negative std was drawn from
    if centers.dim() != 2 or 0 in centers.shape:
        raise ValueError(
            f"centers must be the modes' means (K, D), K, D >= 1, got {tuple(centers.shape)}"
        )
    num_samples = check_count("num_samples", num_samples, minimum=0)
    spread = torch.as_tensor(std, dtype=torch.float64)
    if not bool(torch.isfinite(spread).all() & (spread >= 0).all()):
        raise ValueError(f"std must be finite and non-negative, got {std!r}")
    which = torch.randint(len(centers), (num_samples,), generator=generator, device=centers.device)
    noise = torch.randn(
        num_samples,
        centers.shape[-1],
        generator=generator,
        dtype=centers.dtype,
        device=centers.device,
    )
    return centers[which] + std * noise


def mode_coverage(
    samples: torch.Tensor,
    centers: torch.Tensor,
    std: float,
    *,
    n_sigma: float = 3.0,
    min_count: int = 20,
) -> ModeCoverage:
    """Modes captured and share of high-quality samples.

    For 2D data drawn from the mixture itself, a sample is within 3 standard deviations of
    its mode with probability :math:`1 - e^{-9/2} \\approx 98.9\\%`, the ceiling of
    ``high_quality``.

    Args:
        samples: generated points, shape ``(N, D)``, or ``(..., N, D)`` from
            ``pyro.infer.Predictive`` (leading dims are more samples).
        centers: the mixture's means, shape ``(K, D)``.
        std: the components' standard deviation.
        n_sigma: radius of a high-quality sample's ball, in standard deviations.
        min_count: high-quality samples a mode needs to count as captured (a threshold
            above one keeps a few stray samples from counting as a mode).

    Returns:
        A :class:`ModeCoverage`.

    Example:
        >>> centers = grid_modes()
        >>> collapsed = centers[:3].repeat(100, 1)  # all samples on three modes
        >>> cov = mode_coverage(collapsed, centers, 0.05)
        >>> cov.modes, cov.high_quality
        (3, 1.0)
    """
    samples = as_tensor(samples, "samples", "points (..., D)")
    centers = as_tensor(centers, "centers", "the modes' means (K, D)")
    # D = 0 put every sample on every mode: "8/8 modes, 100% high quality" of nothing
    if (
        centers.dim() != 2
        or 0 in centers.shape
        or samples.dim() == 0
        or samples.shape[-1:] != centers.shape[1:]
    ):
        raise ValueError(
            f"samples (..., D) and centers (K, D) with K >= 1 and D >= 1 must share their last "
            f"dim D, got {tuple(samples.shape)} and {tuple(centers.shape)}"
        )
    # pyro.infer.Predictive puts draws on a leading dim, (num_samples, N, D): every point
    # is a sample, whatever the batch dims in front of D
    samples = samples.reshape(-1, samples.shape[-1])
    # a per-mode std (K,) failed with torch's "Boolean value of Tensor with more than one
    # value is ambiguous": the balls here share one radius
    if isinstance(std, torch.Tensor | np.ndarray) and math.prod(std.shape) != 1:
        raise ValueError(
            f"std must be one number, the components' shared standard deviation (mode_coverage "
            f"measures mixtures of equal-width modes), got an array of shape {tuple(std.shape)}"
        )
    if not float(std) > 0:
        raise ValueError(f"std must be positive, got {std!r}")
    std = float(std)
    # n_sigma=0 (or a negative radius) read as "0 modes, 0% high quality": a mode collapse
    # that was only an empty ball
    if not n_sigma > 0:
        raise ValueError(f"n_sigma must be positive (3.0 is the benchmarks'), got {n_sigma!r}")
    # no samples read as "0 modes, 0% high quality", and min_count=0 counted every mode as
    # captured with no sample near it
    if samples.shape[0] == 0:
        raise ValueError("mode_coverage needs at least one sample, got none")
    # a fractional min_count (2.5) counted as its ceiling without a word
    if isinstance(min_count, bool) or not isinstance(min_count, numbers.Integral) or min_count < 1:
        raise ValueError(f"min_count must be at least 1 and a whole number, got {min_count!r}")
    # a diverged model's NaN samples read as a mode collapse ("0/8 modes")
    finite = torch.isfinite(samples).all(-1)
    if not bool(finite.all()):
        raise ValueError(
            f"{int((~finite).sum())} of {len(samples)} samples hold NaN or infinite values (a "
            "diverged model?): drop or fix them before counting modes"
        )
    # float64 differences, never cdist's |x|^2 + |c|^2 - 2 x.c: around an offset of 1e4
    # float32 cancellation moved samples lying exactly on the modes by more than 3 std
    # (2/8 modes captured), and integer centers failed inside cdist
    a = samples.detach().to(centers.device, torch.float64)
    c = centers.detach().to(torch.float64)
    distance, nearest = torch.cdist(a, c, compute_mode="donot_use_mm_for_euclid_dist").min(-1)
    good = distance <= n_sigma * std
    counts = torch.bincount(nearest[good], minlength=len(centers))
    # counted, then divided on the host: the same share on every device, to the last bit
    share = int(good.sum()) / len(samples)
    return ModeCoverage(int((counts >= min_count).sum()), len(centers), share, counts)
