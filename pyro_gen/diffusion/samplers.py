"""Samplers for a trained :class:`~pyro_gen.diffusion.DDPM`: ancestral (the model's own reverse
chain) and DDIM (any subsequence of steps, deterministic at ``eta=0``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from pyro_gen.diffusion.ddpm import DDPM

__all__ = ["ancestral_sample", "ddim_sample", "ddim_timesteps"]


def _start(
    ddpm: DDPM, n: int, generator: torch.Generator | None, x_T: torch.Tensor | None
) -> torch.Tensor:
    if x_T is None:
        return _noise(ddpm, n, generator)
    want = (n, *ddpm.net_shape)
    if tuple(x_T.shape) != want:
        # x_T of other rows ran silently with num_samples ignored; of another event shape it
        # met torch's "shape '[3, 1]' is invalid for input of size 6"
        raise ValueError(
            f"x_T has shape {tuple(x_T.shape)}; it must be (num_samples, *the network's input "
            f"shape) = {want} (images of event shape (H, W) as (N, 1, H, W), in [-1, 1])"
        )
    return x_T


def _noise(ddpm: DDPM, n: int, generator: torch.Generator | None) -> torch.Tensor:
    ref = ddpm.sample_reference()
    return torch.randn(
        (n, *ddpm.net_shape), generator=generator, device=ref.device, dtype=ref.dtype
    )


@torch.no_grad()
def ancestral_sample(
    ddpm: DDPM,
    num_samples: int,
    *,
    progress: bool = False,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    context: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Run :math:`x_T \\sim \\mathcal N(0, I)`, :math:`x_{t-1} \\sim p_\\theta(x_{t-1} \\mid
    x_t)` for :math:`t = T, \\dots, 2`, and return the decoder mean
    :math:`\\mu_\\theta(x_1, 1)` without noise (as in Ho et al.), in data space. ``context``
    (one row per sample) goes to the network as keyword arguments.

    Example:
        >>> from pyro_gen.diffusion import build_ddpm
        >>> ancestral_sample(build_ddpm((2,), timesteps=5, hidden_dim=8), 4).shape
        torch.Size([4, 2])
    """
    T = ddpm.schedule.num_timesteps
    x = _start(ddpm, num_samples, generator, x_T)
    for t in tqdm(range(T, 0, -1), disable=not progress, desc="ancestral", leave=False):
        p = ddpm.p_mean_logvar(x, t, clip=ddpm.clip_denoised, **(context or {}))
        if t == 1:
            x = p["mean"]
        else:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = p["mean"] + (0.5 * p["log_var"]).exp() * z
    return ddpm.from_model_space(x)


def ddim_timesteps(num_timesteps: int, steps: int) -> torch.Tensor:
    """``steps`` evenly spaced 1-based steps ending at T (all of them when ``steps == T``).

    Example:
        >>> ddim_timesteps(10, 4)
        tensor([ 1,  4,  7, 10])
        >>> ddim_timesteps(10, 1)  # one step: from T straight to the data
        tensor([10])
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"the number of sampler steps must lie in [1, T={num_timesteps}], "
                         f"got {steps}")  # fmt: skip
    if steps == 1:
        # linspace(1, T, 1) is [1]: one DDIM step then started at step 1, treating the prior
        # draw x_T as nearly clean data, and returned it almost unchanged
        return torch.tensor([num_timesteps])
    return torch.linspace(1, num_timesteps, steps, dtype=torch.float64).round().long()


@torch.no_grad()
def ddim_sample(
    ddpm: DDPM,
    num_samples: int,
    *,
    steps: int | None = None,
    eta: float = 0.0,
    progress: bool = False,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    context: dict[str, Any] | None = None,
) -> torch.Tensor:
    """DDIM sampling along steps :math:`\\tau_S > \\dots > \\tau_1`, with
    :math:`\\tau_0 = 0`, :math:`\\bar\\alpha_0 = 1`:

    .. math::

        x_{\\tau_{i-1}} = \\sqrt{\\bar\\alpha_{\\tau_{i-1}}}\\,\\hat x_0
        + \\sqrt{1 - \\bar\\alpha_{\\tau_{i-1}} - \\sigma_i^2}\\,\\hat\\epsilon + \\sigma_i z,
        \\quad \\sigma_i = \\eta
        \\sqrt{\\frac{1-\\bar\\alpha_{\\tau_{i-1}}}{1-\\bar\\alpha_{\\tau_i}}}
        \\sqrt{1 - \\frac{\\bar\\alpha_{\\tau_i}}{\\bar\\alpha_{\\tau_{i-1}}}}.

    ``eta=0`` is deterministic; ``eta=1`` with all T steps is exactly the ancestral sampler
    with the posterior variance (``variance="fixed_small"``). Learned variances are ignored.
    ``context`` (one row per sample) goes to the network as keyword arguments.

    References:
        Song, Meng, Ermon. Denoising Diffusion Implicit Models. arXiv:2010.02502.

    Example:
        >>> from pyro_gen.diffusion import build_ddpm
        >>> ddim_sample(build_ddpm((2,), timesteps=10, hidden_dim=8), 3, steps=4).shape
        torch.Size([3, 2])
    """
    if not (math.isfinite(eta) and eta >= 0):
        # a negative eta ran as its absolute value (only sigma^2 and a symmetric draw see it)
        raise ValueError(f"eta must be a number >= 0 (0: deterministic DDIM), got {eta}")
    s = ddpm.schedule
    T = s.num_timesteps
    taus = ddim_timesteps(T, T if steps is None else steps).tolist()
    x = _start(ddpm, num_samples, generator, x_T)
    for i in tqdm(range(len(taus) - 1, -1, -1), disable=not progress, desc="ddim", leave=False):
        t = taus[i]
        p = ddpm.p_mean_logvar(x, t, clip=ddpm.clip_denoised, **(context or {}))
        ab = s.alphas_cumprod[t - 1]
        ab_prev = s.alphas_cumprod[taus[i - 1] - 1] if i > 0 else ab.new_ones(())
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()
        direction = (1 - ab_prev - sigma**2).clamp(min=0).sqrt()
        x = ab_prev.sqrt() * p["x0"] + direction * p["eps"]
        if i > 0 and eta > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + sigma * z
    return ddpm.from_model_space(x)
