r"""Forward diffusion processes as stochastic differential equations on :math:`t \in [0, 1]`.

Every process here has a linear drift, :math:`dx = f(t)\, x\, dt + g(t)\, dw`, so its
transition from the data is Gaussian,

.. math::

    p_{0t}(x_t \mid x_0) = \mathcal N(\alpha(t)\, x_0, \sigma(t)^2 I), \qquad
    \frac{d \log \alpha}{dt} = f(t), \quad
    \frac{d \sigma^2}{dt} = 2 f(t) \sigma^2 + g(t)^2,

and every one has the reverse-time SDE and the probability-flow ODE with the same marginals
(Anderson 1982; Song et al. 2021):

.. math::

    dx = [f(t) x - g(t)^2 \nabla_x \log p_t(x)]\, dt + g(t)\, d\bar w, \qquad
    \frac{dx}{dt} = f(t) x - \tfrac12 g(t)^2 \nabla_x \log p_t(x).

Times are tensors shaped like the batch (or 0-dim); coefficients come back in the same shape
and :meth:`SDE.expand` lines them up with the data's event dims. Noise, score, :math:`x_0` and
v predictions convert through :meth:`SDE.convert` with the marginal's :math:`(\alpha, \sigma)`.

References:
    Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole. Score-Based Generative Modeling through
    Stochastic Differential Equations. ICLR 2021, arXiv:2011.13456.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyro_gen.diffusion.parameterization import convert_scaled
from pyro_gen.diffusion.schedules import NoiseSchedule
from pyro_gen.transforms._base import PicklableModule

__all__ = ["SDE", "SDES", "ScheduleSDE", "SubVPSDE", "VESDE", "VPSDE", "as_sde", "make_sde"]

#: torchdiffeq solvers with step-size control (they take ``step_t`` / ``jump_t`` options)
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


class SDE(PicklableModule):
    r"""A linear-drift forward SDE :math:`dx = f(t) x\, dt + g(t)\, dw` on :math:`[0, 1]`.

    Subclasses define :meth:`marginal` (:math:`\alpha(t), \sigma(t)`), :meth:`drift_coef`
    (:math:`f(t)`), :meth:`diffusion` (:math:`g(t)`) and the prior's standard deviation
    :attr:`prior_std` (the terminal marginal of the data, approximately).
    """

    #: std of the Gaussian prior :math:`p_1 \approx \mathcal N(0, \text{prior\_std}^2 I)`
    prior_std: float = 1.0

    def jump_times(self) -> Tensor | None:
        """Times where :math:`f` or :math:`g` jump (ODE solvers are told), or None."""
        return None

    def solver_options(self, method: str, t_start: float, t_end: float) -> dict | None:
        """torchdiffeq options for an adaptive solve from ``t_start`` to ``t_end``: land exactly
        on ``t_end`` (a step past it would ask for times outside [0, 1]) and restart at every
        jump of the coefficients strictly between; None for fixed-step methods."""
        if method not in ADAPTIVE_METHODS:
            return None
        lo, hi = sorted((t_start, t_end))
        options: dict = {"step_t": torch.tensor([t_end], dtype=torch.float64)}
        jumps = self.jump_times()
        if jumps is not None:
            inside = jumps[(jumps > lo + 1e-9) & (jumps < hi - 1e-9)]
            if inside.numel():
                options["jump_t"] = inside.double()
        return options

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`(\\alpha(t), \\sigma(t))` of :math:`p_{0t}(x_t \\mid x_0)`."""
        raise NotImplementedError

    def drift_coef(self, t: Tensor) -> Tensor:
        """:math:`f(t)` with drift :math:`f(t)\\, x`."""
        raise NotImplementedError

    def diffusion(self, t: Tensor) -> Tensor:
        """:math:`g(t)`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ derived
    @staticmethod
    def expand(coef: Tensor, x: Tensor) -> Tensor:
        """``coef`` (shaped like the batch, or 0-dim) with trailing ones to broadcast on ``x``."""
        return coef.reshape(coef.shape + (1,) * (x.dim() - coef.dim()))

    def _time(self, t: Tensor | float, like: Tensor) -> Tensor:
        # no range check here: adaptive solvers probe just past the end of their interval
        return torch.as_tensor(t, dtype=like.dtype, device=like.device)

    def _checked_time(self, t: Tensor | float, like: Tensor) -> Tensor:
        t = self._time(t, like)
        if not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError(f"SDE times must lie in [0, 1]; got min {float(t.min()):.4g}, "
                             f"max {float(t.max()):.4g}")  # fmt: skip
        return t

    def marginal_params(self, x0: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean :math:`\\alpha(t) x_0` and std :math:`\\sigma(t)` (broadcast to ``x0``).

        Raises:
            ValueError: for a time outside [0, 1].
        """
        t = self._checked_time(t, x0)
        alpha, sigma = self.marginal(t)
        mean = self.expand(alpha, x0) * x0
        return mean, self.expand(sigma, x0).expand_as(mean)

    def perturb(self, x0: Tensor, t: Tensor | float, noise: Tensor) -> Tensor:
        """:math:`x_t = \\alpha(t) x_0 + \\sigma(t) \\epsilon`."""
        mean, std = self.marginal_params(x0, t)
        return mean + std * noise

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The forward drift :math:`f(t)\\, x`."""
        return self.expand(self.drift_coef(self._time(t, x)), x) * x

    def reverse_drift(
        self, x: Tensor, t: Tensor | float, score: Tensor, probability_flow: bool = False
    ) -> Tensor:
        """Drift of the reverse SDE :math:`f x - g^2 s` (or of the probability-flow ODE,
        :math:`f x - \\tfrac12 g^2 s`, with ``probability_flow=True``), in forward time."""
        t = self._time(t, x)
        g2 = self.expand(self.diffusion(t) ** 2, x)
        return self.drift(x, t) - (0.5 if probability_flow else 1.0) * g2 * score

    def convert(self, pred: Tensor, source: str, target: str, x_t: Tensor, t: Tensor) -> Tensor:
        """Convert a prediction between ``"eps"``, ``"score"``, ``"x0"`` and ``"v"`` at time
        ``t`` (see :func:`~pyro_gen.diffusion.parameterization.convert_scaled`)."""
        alpha, sigma = self.marginal(self._time(t, x_t))
        return convert_scaled(
            pred, source, target, x_t, self.expand(alpha, x_t), self.expand(sigma, x_t)
        )

    def prior_sample(
        self, shape: tuple[int, ...], *, generator: torch.Generator | None = None, like=None
    ) -> Tensor:
        """Draws from the prior :math:`\\mathcal N(0, \\text{prior\\_std}^2 I)`."""
        ref = like if like is not None else torch.zeros(())
        z = torch.randn(shape, generator=generator, dtype=ref.dtype, device=ref.device)
        return self.prior_std * z

    def prior_log_prob(self, x: Tensor, event_dim: int) -> Tensor:
        """Log-density of the prior, summed over the last ``event_dim`` dims."""
        lp = (
            -0.5 * (x / self.prior_std) ** 2
            - math.log(self.prior_std)
            - 0.5 * math.log(2 * math.pi)
        )
        return lp.flatten(lp.dim() - event_dim).sum(-1) if event_dim else lp


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class VESDE(SDE):
    r"""Variance exploding SDE (NCSN as an SDE): :math:`f = 0`,
    :math:`\sigma(t) = \sigma_{min} (\sigma_{max}/\sigma_{min})^t`,
    :math:`g(t) = \sigma(t) \sqrt{2 \log(\sigma_{max}/\sigma_{min})}`, :math:`\alpha = 1`.

    As in Song et al., :math:`\sigma(t)^2` is the whole marginal variance, so :math:`p_0` is
    the data smoothed by :math:`\sigma_{min}` (choose it below the data's resolution). The prior
    is :math:`\mathcal N(0, \sigma_{max}^2 I)`: take :math:`\sigma_{max}` about the largest
    distance between two data points.

    Example:
        >>> sde = VESDE(0.01, 50.0)
        >>> [round(float(v), 3) for v in sde.marginal(torch.tensor(1.0))]
        [1.0, 50.0]
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        super().__init__()
        self.sigma_min = _positive("sigma_min", sigma_min)
        self.sigma_max = _positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max ({sigma_max}) must exceed sigma_min ({sigma_min})")
        self.prior_std = self.sigma_max
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.sigma_min * torch.exp(t * self._log_ratio)
        return torch.ones_like(sigma), sigma

    def drift_coef(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def diffusion(self, t: Tensor) -> Tensor:
        return self.marginal(t)[1] * math.sqrt(2 * self._log_ratio)


class VPSDE(SDE):
    r"""Variance preserving SDE (the DDPM's limit): :math:`\beta(t) = \beta_{min} +
    t(\beta_{max} - \beta_{min})`, :math:`f = -\tfrac12\beta(t)`, :math:`g = \sqrt{\beta(t)}`,
    :math:`\alpha(t) = e^{-\frac12 \int_0^t \beta}`, :math:`\sigma(t)^2 = 1 - \alpha(t)^2`.

    A DDPM with :math:`T` linear betas from :math:`\beta_1` to :math:`\beta_T` discretises
    it with :math:`\beta_{min} = T\beta_1`, :math:`\beta_{max} = T\beta_T` (Ho et al.'s
    defaults give 0.1 and 20); :class:`ScheduleSDE` follows any discrete schedule exactly.

    Example:
        >>> sde = VPSDE()
        >>> a, s = sde.marginal(torch.tensor(0.5))
        >>> round(float(a**2 + s**2), 6)
        1.0
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        super().__init__()
        self.beta_min = _positive("beta_min", beta_min)
        self.beta_max = _positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max ({beta_max}) must be at least beta_min ({beta_min})")

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_alpha = self._log_alpha(t)
        return log_alpha.exp(), (-torch.expm1(2 * log_alpha)).sqrt()

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion(self, t: Tensor) -> Tensor:
        return self.beta(t).sqrt()


class SubVPSDE(VPSDE):
    r"""Sub-variance-preserving SDE: the VP drift with
    :math:`g(t)^2 = \beta(t)(1 - e^{-2\int_0^t\beta})`, so
    :math:`\sigma(t) = 1 - \alpha(t)^2`, below the VP's at every :math:`t` (Song et al. report
    better likelihoods with it).

    Example:
        >>> a, s = SubVPSDE().marginal(torch.tensor(0.5))
        >>> bool(torch.isclose(s, 1 - a**2))
        True
    """

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_alpha = self._log_alpha(t)
        return log_alpha.exp(), -torch.expm1(2 * log_alpha)

    def diffusion(self, t: Tensor) -> Tensor:
        return (self.beta(t) * -torch.expm1(4 * self._log_alpha(t))).sqrt()


class ScheduleSDE(SDE):
    r"""The VP SDE that passes exactly through a DDPM's discrete schedule: time :math:`t = i/T`
    is step :math:`i`, with :math:`\alpha(i/T)^2 = \bar\alpha_i`.

    Between the steps :math:`\log\bar\alpha` is the monotone cubic (PCHIP, Fritsch &
    Carlson 1980) through the :math:`T + 1` knots, so :math:`\beta(t) = -\frac{d}{dt}
    \log\bar\alpha(t) \ge 0` is continuous, about :math:`T\beta_i` near step :math:`i`;
    :math:`f = -\tfrac12\beta(t)`, :math:`g = \sqrt{\beta(t)}`. (With linear interpolation
    :math:`\beta` would jump at each of the :math:`T - 1` boundaries, and an adaptive ODE
    solve must restart at every jump or lose accuracy: thousands of network calls for a
    1000-step DDPM.) A DDPM's network, asked at the fractional step :math:`tT`, is then a
    score model of this SDE (see :func:`~pyro_gen.diffusion.score.ddpm_score`).

    Args:
        schedule: the DDPM's :class:`~pyro_gen.diffusion.NoiseSchedule`.

    Example:
        >>> from pyro_gen.diffusion import make_schedule
        >>> s = make_schedule("linear", 10)
        >>> a, _ = ScheduleSDE(s).marginal(torch.tensor(0.3))
        >>> bool(torch.isclose(a**2, s.alphas_cumprod[2]))
        True
    """

    log_alpha_bar: Tensor
    slopes: Tensor

    def __init__(self, schedule: NoiseSchedule) -> None:
        super().__init__()
        betas = schedule.betas.double()
        log_ab = torch.cat([betas.new_zeros(1), torch.cumsum(torch.log1p(-betas), 0)])
        self.num_timesteps = int(betas.shape[0])
        self.register_buffer("log_alpha_bar", log_ab)
        # d log_alpha_bar / d(step) at the knots, PCHIP's: the harmonic mean of the
        # neighbouring secants (all negative: the interpolant stays decreasing), one-sided
        # at the ends
        d = log_ab[1:] - log_ab[:-1]
        inner = 2 / (1 / d[:-1] + 1 / d[1:])
        self.register_buffer("slopes", torch.cat([d[:1], inner, d[-1:]]))

    def _interval(self, t: Tensor) -> tuple[Tensor, Tensor]:
        T = self.num_timesteps
        pos = t * T
        i = pos.detach().ceil().long().clamp(1, T)  # interval ((i-1)/T, i/T]
        return i, pos - (i - 1)

    def _hermite(self, t: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`\log\bar\alpha(t)` and its derivative in steps, :math:`d/d(tT)`."""
        i, s = self._interval(t)
        y, m = self.log_alpha_bar.to(t.dtype), self.slopes.to(t.dtype)
        y0, y1, m0, m1 = y[i - 1], y[i], m[i - 1], m[i]
        s2, s3 = s * s, s * s * s
        value = (
            (2 * s3 - 3 * s2 + 1) * y0 + (s3 - 2 * s2 + s) * m0
            + (3 * s2 - 2 * s3) * y1 + (s3 - s2) * m1
        )  # fmt: skip
        slope = (6 * s2 - 6 * s) * (y0 - y1) + (3 * s2 - 4 * s + 1) * m0 + (3 * s2 - 2 * s) * m1
        return value, slope

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_ab = self._hermite(t)[0]
        return (0.5 * log_ab).exp(), (-torch.expm1(log_ab)).sqrt()

    def beta(self, t: Tensor) -> Tensor:
        return -self.num_timesteps * self._hermite(t)[1]

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion(self, t: Tensor) -> Tensor:
        return self.beta(t).clamp(min=0).sqrt()


#: names accepted by :func:`make_sde`
SDES = ("ve", "vp", "subvp", "vdm")


def make_sde(name: str, **kwargs: float) -> SDE:
    """Build an SDE by name: ``"ve"``, ``"vp"``, ``"subvp"`` or ``"vdm"`` (the VP SDE with a
    learned schedule, :class:`~pyro_gen.diffusion.learned_sde.LearnedVPSDE`); keyword arguments
    go to it.

    Example:
        >>> type(make_sde("subvp")).__name__, type(make_sde("vdm")).__name__
        ('SubVPSDE', 'LearnedVPSDE')
    """
    from pyro_gen.diffusion.learned_sde import LearnedVPSDE

    builders = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE, "vdm": LearnedVPSDE}
    if name not in builders:
        raise ValueError(f"unknown SDE {name!r}; choose one of {list(SDES)}")
    return builders[name](**kwargs)


def as_sde(sde: object) -> SDE:
    """``sde`` as an :class:`SDE`: itself, a name for :func:`make_sde`, or a DDPM's variance
    schedule (a :class:`~pyro_gen.diffusion.NoiseSchedule`, or its betas as a 1-D tensor or
    list) as the :class:`ScheduleSDE` through it.

    Why: a score model given a schedule or a name, as a DDPM takes them, failed inside with
    "'Tensor' object has no attribute 'parameters'" or "'NoiseSchedule' object has no
    attribute 'marginal'".

    Raises:
        TypeError: for anything else, naming the choices.

    Example:
        >>> type(as_sde("vp")).__name__, type(as_sde(torch.tensor([0.1, 0.2]))).__name__
        ('VPSDE', 'ScheduleSDE')
    """
    from pyro_gen.diffusion.schedules import as_schedule

    if isinstance(sde, SDE):
        return sde
    if isinstance(sde, str):
        return make_sde(sde)
    if isinstance(sde, NoiseSchedule | list | tuple) or torch.is_tensor(sde):
        return ScheduleSDE(as_schedule(sde, 1))  # betas given: their count is T
    raise TypeError(
        f"sde must be an SDE (VPSDE(), VESDE(...), ...), a name ({', '.join(SDES)}) or a DDPM "
        f"variance schedule (a NoiseSchedule or its betas), got {type(sde).__name__}"
    )
