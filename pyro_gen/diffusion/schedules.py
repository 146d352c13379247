"""Noise schedules of the forward (noising) process and every quantity derived from them.

The forward process is the Markov chain

.. math::

    q(x_t \\mid x_{t-1}) = \\mathcal N(\\sqrt{1-\\beta_t}\\, x_{t-1}, \\beta_t I),
    \\qquad t = 1, \\dots, T,

with marginals :math:`q(x_t \\mid x_0) = \\mathcal N(\\sqrt{\\bar\\alpha_t} x_0,
(1-\\bar\\alpha_t) I)`, :math:`\\bar\\alpha_t = \\prod_{s \\le t} (1 - \\beta_s)`.
Time steps are 1-based everywhere in pyro_gen.diffusion; buffers are indexed by ``t - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "as_schedule",
    "NoiseSchedule",
    "cosine_betas",
    "linear_betas",
    "make_schedule",
    "sigmoid_betas",
]


def linear_betas(
    timesteps: int, start: float | None = None, end: float | None = None
) -> torch.Tensor:
    """Linearly spaced :math:`\\beta_t` (Ho et al., 2020).

    The defaults are Ho et al.'s :math:`10^{-4}` to :math:`0.02` at :math:`T = 1000`, scaled
    by :math:`1000/T` for other :math:`T` (Nichol & Dhariwal) so that :math:`\\bar\\alpha_T`
    stays near zero and :math:`L_T` negligible; :math:`\\beta_T` is capped at 0.999.

    Args:
        timesteps: number of steps :math:`T`.
        start: :math:`\\beta_1` (default :math:`10^{-4} \\cdot 1000/T`).
        end: :math:`\\beta_T` (default :math:`0.02 \\cdot 1000/T`, at most 0.999).

    Returns:
        float64 tensor of shape ``(T,)``.

    References:
        Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239.

    Example:
        >>> linear_betas(4, 0.1, 0.4)
        tensor([0.1000, 0.2000, 0.3000, 0.4000], dtype=torch.float64)
    """
    _check_timesteps(timesteps)
    scale = 1000 / timesteps
    start = 1e-4 * scale if start is None else start
    end = min(0.02 * scale, 0.999) if end is None else end
    return torch.linspace(start, end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule: :math:`\\bar\\alpha_t = f(t)/f(0)`,
    :math:`f(t) = \\cos^2\\big(\\frac{t/T + s}{1 + s} \\frac{\\pi}{2}\\big)`, betas clipped at
    ``max_beta``.

    References:
        Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672.

    Example:
        >>> b = cosine_betas(10)
        >>> b.shape, bool((b > 0).all() and (b < 1).all())
        (torch.Size([10]), True)
    """
    _check_timesteps(timesteps)
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


def sigmoid_betas(
    timesteps: int,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """Sigmoid schedule: :math:`\\bar\\alpha_t` follows a rescaled, reversed sigmoid of
    :math:`t/T` between ``start`` and ``end`` with temperature ``tau``.

    References:
        Jabri, Fleet, Chen. Scalable Adaptive Computation for Iterative Generation.
        arXiv:2212.11972. Chen. On the Importance of Noise Scheduling for Diffusion Models.
        arXiv:2301.10972.

    Example:
        >>> b = sigmoid_betas(10)
        >>> bool((b > 0).all() and (b < 1).all())
        True
    """
    _check_timesteps(timesteps)
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    f = (v_end - torch.sigmoid((steps * (end - start) + start) / tau)) / (v_end - v_start)
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(min=1e-8, max=max_beta)


def _check_timesteps(timesteps: int) -> None:
    if int(timesteps) != timesteps or timesteps < 1:
        raise ValueError(f"the number of time steps T must be an integer >= 1, got {timesteps}")


class NoiseSchedule(nn.Module):
    """A variance schedule :math:`\\beta_{1:T}` with all derived quantities as buffers.

    Buffers (each of shape ``(T,)``, entry ``t - 1`` belongs to step ``t``): ``betas``,
    ``alphas`` :math:`=1-\\beta_t`, ``alphas_cumprod`` :math:`\\bar\\alpha_t`,
    ``alphas_cumprod_prev`` :math:`\\bar\\alpha_{t-1}` (with :math:`\\bar\\alpha_0 = 1`),
    ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``, and the forward posterior

    .. math::

        q(x_{t-1} \\mid x_t, x_0) = \\mathcal N(c^{(1)}_t x_0 + c^{(2)}_t x_t,
        \\tilde\\beta_t I),\\quad
        \\tilde\\beta_t = \\frac{1-\\bar\\alpha_{t-1}}{1-\\bar\\alpha_t}\\beta_t,\\;
        c^{(1)}_t = \\frac{\\sqrt{\\bar\\alpha_{t-1}}\\beta_t}{1-\\bar\\alpha_t},\\;
        c^{(2)}_t = \\frac{\\sqrt{\\alpha_t}(1-\\bar\\alpha_{t-1})}{1-\\bar\\alpha_t}

    as ``posterior_variance``, ``posterior_log_variance_clipped`` (entry 0, which is
    :math:`\\log 0`, replaced by entry 1 as in Nichol & Dhariwal), ``posterior_mean_coef1``,
    ``posterior_mean_coef2``. Everything is computed in float64 and stored in the default
    dtype (float64 under ``torch.set_default_dtype(torch.float64)``), so ``.to(device)`` /
    ``.double()`` move it with the model.

    Args:
        betas: 1-D tensor of :math:`\\beta_t` strictly inside (0, 1).

    References:
        Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239.

    Example:
        >>> s = NoiseSchedule(linear_betas(5, 0.1, 0.5))
        >>> s.num_timesteps, round(float(s.alphas_cumprod[0]), 4)
        (5, 0.9)
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    def __init__(self, betas: torch.Tensor) -> None:
        super().__init__()
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or betas.numel() < 1:
            raise ValueError("betas must be a non-empty 1-D tensor (one beta per time step)")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                f"every beta_t must lie strictly inside (0, 1); got min {float(betas.min())}, "
                f"max {float(betas.max())}"
            )
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        post_var = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        clipped = post_var.clone()
        clipped[0] = post_var[1] if len(post_var) > 1 else betas[0]
        derived = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alpha_bar,
            "alphas_cumprod_prev": alpha_bar_prev,
            "sqrt_alphas_cumprod": alpha_bar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alpha_bar).sqrt(),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": clipped.log(),
            "posterior_mean_coef1": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
            "posterior_mean_coef2": (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar),
        }
        # the default dtype, as the model's parameters: float32 coefficients in a model built
        # under torch.set_default_dtype(torch.float64) computed its bound in float32 precision
        dtype = torch.get_default_dtype()
        for name, value in derived.items():
            self.register_buffer(name, value.to(dtype))
        # kept beside the buffers (not in the state dict): .double() of a float32 build
        # widened float32-rounded coefficients (relative errors ~1e-7 in a float64 bound)
        self._float64 = derived

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for name, exact in self._float64.items():
            buffer = getattr(self, name)
            if buffer.dtype != torch.float64:
                continue
            exact = exact.to(buffer.device)
            # only a widened float32 copy of these very values (a loaded state stays)
            if not torch.equal(buffer, exact) and torch.equal(buffer, exact.float().double()):
                setattr(self, name, exact.clone())
        return self

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    def extract(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Buffer ``name`` at 1-based steps ``t``, reshaped to broadcast against a tensor with
        ``ndim`` trailing event dims."""
        values = getattr(self, name)[t - 1]
        return values.reshape(values.shape + (1,) * ndim)

    def q_mean_std(self, x0: torch.Tensor, t: torch.Tensor, ndim: int):
        """Mean and std of :math:`q(x_t \\mid x_0)`."""
        mean = self.extract("sqrt_alphas_cumprod", t, ndim) * x0
        return mean, self.extract("sqrt_one_minus_alphas_cumprod", t, ndim).expand_as(mean)

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, ndim: int
    ) -> torch.Tensor:
        """Draw :math:`x_t = \\sqrt{\\bar\\alpha_t} x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon`."""
        mean, std = self.q_mean_std(x0, t, ndim)
        return mean + std * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, ndim: int):
        """Mean and clipped log-variance of :math:`q(x_{t-1} \\mid x_t, x_0)`."""
        mean = (
            self.extract("posterior_mean_coef1", t, ndim) * x0
            + self.extract("posterior_mean_coef2", t, ndim) * xt
        )
        log_var = self.extract("posterior_log_variance_clipped", t, ndim).expand_as(mean)
        return mean, log_var


def make_schedule(name: str, timesteps: int = 1000, **kwargs: float) -> NoiseSchedule:
    """Build a :class:`NoiseSchedule` by name: ``"linear"``, ``"cosine"`` or ``"sigmoid"``.

    Example:
        >>> make_schedule("cosine", 50).num_timesteps
        50
    """
    builders = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}
    if name not in builders:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(builders)}")
    return NoiseSchedule(builders[name](timesteps, **kwargs))


def as_schedule(
    schedule: NoiseSchedule | str | Sequence[float] | torch.Tensor, timesteps: int
) -> NoiseSchedule:
    """``schedule`` as a :class:`NoiseSchedule`: itself, a name for :func:`make_schedule` (with
    ``timesteps``), or the betas :math:`\\beta_{1:T}` (a 1-D tensor or list, each in (0, 1)).

    Example:
        >>> as_schedule([0.1, 0.2], 1000).num_timesteps
        2
    """
    # betas given directly (a tensor or list, as schedules are written in DDPM code) met
    # "unhashable type: 'list'" or "unknown schedule tensor([...])"
    if isinstance(schedule, NoiseSchedule):
        return schedule
    if isinstance(schedule, str):
        return make_schedule(schedule, timesteps)
    try:
        betas = torch.as_tensor(schedule, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            "schedule must be a NoiseSchedule, a name ('linear', 'cosine', 'sigmoid') or a 1-D "
            f"tensor of betas, got {type(schedule).__name__}"
        ) from err
    try:
        return NoiseSchedule(betas)
    except ValueError as err:
        raise ValueError(f"schedule (the betas given): {err}") from None
