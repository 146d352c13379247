r"""Samplers for any score model of a forward SDE: annealed Langevin dynamics, Euler-Maruyama on
the reverse SDE, predictor-corrector, and the probability-flow ODE with an adaptive solver.

Each low-level sampler takes ``score_fn(x, t)`` (``t`` shaped like the batch), the
:class:`~pyro_gen.diffusion.sde.SDE` and the output shape; :func:`sample` runs one by name on a
:class:`~pyro_gen.diffusion.score.ScoreModel` or a trained DDPM. The time grid runs from 1 down
to ``eps``; pass a ``stats`` dict to get the network evaluations, the seconds and the samples per
second back.

References:
    Song, Ermon. Generative Modeling by Estimating Gradients of the Data Distribution (annealed
    Langevin). arXiv:1907.05600. Song et al. Score-Based Generative Modeling through SDEs
    (reverse SDE, predictor-corrector, probability flow). arXiv:2011.13456.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pyro_gen.diffusion.context import expand_context
from pyro_gen.diffusion.data_end import check_score_at_data_end
from pyro_gen.diffusion.sde import SDE
from pyro_gen.transforms._base import sample_count

__all__ = [
    "SAMPLERS",
    "annealed_langevin",
    "euler_maruyama",
    "predictor_corrector",
    "probability_flow",
    "sample",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
#: names accepted by :func:`sample`
SAMPLERS = ("langevin", "euler_maruyama", "pc", "ode")


def _check_steps(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def _check_eps(eps: float) -> float:
    if not 0 <= eps < 1:
        raise ValueError(f"eps (the last sampler time) must lie in [0, 1), got {eps}")
    return float(eps)


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return float(value)


class _Counted:
    """``score_fn`` counting its calls (one network evaluation each)."""

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn, self.calls = score_fn, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.score_fn(x, t)


def _start(
    sde: SDE, shape: tuple[int, ...], x_init, generator, dtype, device
) -> tuple[Tensor, tuple[int, ...]]:
    if x_init is not None:
        # a score function of x alone (an oracle, a network taking any width) ran on x_init of
        # another shape and returned samples of that shape, while shape said otherwise
        if tuple(x_init.shape) != tuple(shape):
            raise ValueError(
                f"x_init has shape {tuple(x_init.shape)} but shape is {tuple(shape)}; they must "
                "agree: (num_samples, *event_shape)"
            )
        return x_init, tuple(x_init.shape[:1])
    ref = torch.zeros((), dtype=dtype or torch.get_default_dtype(), device=device)
    return sde.prior_sample(tuple(shape), generator=generator, like=ref), tuple(shape[:1])


def _randn(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _langevin_step(score_fn: ScoreFn, x: Tensor, t: Tensor, snr: float, generator) -> Tensor:
    # Song et al.'s corrector: the step makes ||signal|| / ||noise|| equal to snr on average
    if x.numel() == 0:
        # no samples: reshape(0, -1) is ambiguous and failed ("cannot reshape tensor of 0
        # elements"), where the other samplers return the empty batch
        return x
    grad = score_fn(x, t)
    noise = _randn(x, generator)
    # one norm per sample; reshape, not flatten(1), so scalar data (event shape ()) work too
    grad_norm = grad.reshape(grad.shape[0], -1).norm(dim=-1).mean()
    noise_norm = noise.reshape(noise.shape[0], -1).norm(dim=-1).mean()
    step = 2 * (snr * noise_norm / grad_norm.clamp(min=1e-12)) ** 2
    return x + step * grad + (2 * step).sqrt() * noise


def _em_step(score_fn, sde, x, t, h, generator) -> tuple[Tensor, Tensor]:
    drift = sde.reverse_drift(x, t, score_fn(x, t))
    mean = x - drift * h
    g = sde.expand(sde.diffusion(t), x)
    return mean + g * math.sqrt(h) * _randn(x, generator), mean


@torch.no_grad()
def euler_maruyama(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    steps: int = 500,
    eps: float = 1e-3,
    corrector_steps: int = 0,
    snr: float = 0.16,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    x_init: Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Euler-Maruyama on the reverse SDE from :math:`t = 1` to ``eps`` in ``steps`` equal steps,

    .. math::

        x \leftarrow x - [f(t) x - g(t)^2 s_\theta(x, t)]\, h + g(t) \sqrt h\, z,

    with ``corrector_steps`` Langevin corrector steps at each time after the predictor step
    (predictor-corrector, see :func:`predictor_corrector`). With ``denoise`` the last step
    returns its mean (no noise added), as Song et al. do.

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: the forward process.
        shape: ``(num_samples, *event_shape)``.
        steps: predictor steps.
        eps: last time.
        corrector_steps: Langevin steps per time (0: plain Euler-Maruyama).
        snr: corrector signal-to-noise ratio.
        denoise: return the last step's mean.
        generator: random generator.
        x_init: start from these instead of prior draws.
        dtype: dtype of the prior draws.
        device: device of the prior draws.

    Example:
        >>> from pyro_gen.diffusion.sde import VPSDE
        >>> # data N(0, I): the perturbed data are N(0, I) at every t and the score is -x
        >>> x = euler_maruyama(lambda x, t: -x, VPSDE(), (2000, 2), steps=50)
        >>> bool(abs(x.std() - 1) < 0.1)
        True
    """
    steps, eps = _check_steps("steps", steps), _check_eps(eps)
    corrector_steps = int(corrector_steps)
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
    if corrector_steps:
        snr = _positive("snr", snr)
    x, batch = _start(sde, shape, x_init, generator, dtype, device)
    ts = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64).tolist()
    mean = x
    for i in range(steps):
        t = torch.full(batch, ts[i], dtype=x.dtype, device=x.device)
        x, mean = _em_step(score_fn, sde, x, t, ts[i] - ts[i + 1], generator)
        t_next = torch.full(batch, ts[i + 1], dtype=x.dtype, device=x.device)
        for _ in range(corrector_steps):
            x = _langevin_step(score_fn, x, t_next, snr, generator)
            mean = x
    return mean if denoise else x


def predictor_corrector(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    steps: int = 500,
    corrector_steps: int = 1,
    snr: float = 0.16,
    **kwargs: Any,
) -> Tensor:
    r"""Predictor-corrector sampling: an Euler-Maruyama predictor step of the reverse SDE, then
    ``corrector_steps`` Langevin steps on :math:`p_t` with step size
    :math:`2 (r \|z\| / \|s_\theta\|)^2` (``r`` = ``snr``, norms averaged over the batch).

    Keyword arguments as :func:`euler_maruyama`.

    Example:
        >>> from pyro_gen.diffusion.sde import VESDE
        >>> sde = VESDE(0.01, 5.0)
        >>> score = lambda x, t: -x / (1 + sde.expand(sde.marginal(t)[1], x) ** 2)  # N(0, I)
        >>> x = predictor_corrector(score, sde, (2000, 2), steps=100)
        >>> bool(abs(x.std() - 1) < 0.1)
        True
    """
    corrector_steps = _check_steps("corrector_steps", corrector_steps)
    return euler_maruyama(
        score_fn, sde, shape, steps=steps, corrector_steps=corrector_steps, snr=snr, **kwargs
    )


def _geometric_levels(sde: SDE, levels: int, eps: float, device: torch.device) -> list[float]:
    # times whose marginal stds are geometric from sigma(1) to sigma(eps), as NCSN's levels
    # (for the VE SDE these are equally spaced times); the grid lies beside the samples, where
    # a learned schedule's buffers are
    grid = torch.linspace(eps, 1.0, 4001, dtype=torch.float64, device=device)
    log_sigma = sde.marginal(grid)[1].clamp(min=1e-300).log()
    targets = torch.linspace(
        float(log_sigma[-1]), float(log_sigma[0]), levels, dtype=torch.float64, device=device
    )
    idx = torch.searchsorted(log_sigma.contiguous(), targets).clamp(max=grid.numel() - 1)
    times = grid[idx].tolist()
    times[0], times[-1] = 1.0, eps
    return times


@torch.no_grad()
def annealed_langevin(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    levels: int = 10,
    steps_per_level: int = 100,
    step_size: float = 0.2,
    eps: float = 1e-3,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    x_init: Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Annealed Langevin dynamics (NCSN): for noise levels at times :math:`t_1 = 1 > \dots >
    t_L = \epsilon` whose marginal stds :math:`\sigma_i` are geometric, ``steps_per_level``
    steps of

    .. math::

        x \leftarrow x + \tfrac{a_i}2 s_\theta(x, t_i) + \sqrt{a_i}\, z, \qquad
        a_i = \delta\, \sigma_i^2,

    with :math:`\delta` = ``step_size`` (Song & Ermon's :math:`\epsilon / \sigma_L^2`: their
    :math:`\epsilon = 2 \cdot 10^{-5}`, :math:`\sigma_L = 0.01` give 0.2). The step is below
    each level's noise variance, so a level mixes in about :math:`1/\delta` steps at its own
    scale; finite steps bias the stationary variance by a relative
    :math:`O(a_i / \mathrm{Var})`, small on the last levels. ``denoise`` ends with Tweedie's
    estimate
    :math:`(x + \sigma_L^2 s_\theta(x, t_L)) / \alpha(t_L)` (Jolicoeur-Martineau et al. 2021).

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: the forward process (its marginal std sets the levels).
        shape: ``(num_samples, *event_shape)``.
        levels: number of noise levels :math:`L`.
        steps_per_level: Langevin steps per level.
        step_size: :math:`\delta`, the step relative to each level's noise variance.
        eps: time of the smallest level.
        denoise: end with the Tweedie denoising step.
        generator: random generator.
        x_init: start from these instead of prior draws.
        dtype: dtype of the prior draws.
        device: device of the prior draws.

    Example:
        >>> from pyro_gen.diffusion.sde import VESDE
        >>> sde = VESDE(0.01, 5.0)
        >>> score = lambda x, t: -x / (1 + sde.expand(sde.marginal(t)[1], x) ** 2)  # N(0, I)
        >>> x = annealed_langevin(score, sde, (2000, 2), levels=10, steps_per_level=200)
        >>> bool(abs(x.std() - 1) < 0.1)
        True
    """
    levels, steps_per_level = (
        _check_steps("levels", levels),
        _check_steps("steps_per_level", steps_per_level),
    )
    step_size, eps = _positive("step_size", step_size), _check_eps(eps)
    x, batch = _start(sde, shape, x_init, generator, dtype, device)
    times = _geometric_levels(sde, levels, eps, x.device)
    if float(sde.marginal(torch.tensor(times[-1], dtype=torch.float64))[1]) <= 0:
        raise ValueError("the smallest noise level has std 0; raise eps above 0")
    for t_val in times:
        t = torch.full(batch, t_val, dtype=x.dtype, device=x.device)
        sigma = float(sde.marginal(torch.tensor(t_val, dtype=torch.float64))[1])
        a = step_size * sigma**2
        for _ in range(steps_per_level):
            x = x + 0.5 * a * score_fn(x, t) + math.sqrt(a) * _randn(x, generator)
    if denoise:
        alpha, sigma_t = sde.marginal(t)
        x = (x + sde.expand(sigma_t**2, x) * score_fn(x, t)) / sde.expand(alpha, x)
    return x


@torch.no_grad()
def probability_flow(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    eps: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    options: dict | None = None,
    generator: torch.Generator | None = None,
    x_init: Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Deterministic sampling by the probability-flow ODE
    :math:`\frac{dx}{dt} = f(t) x - \tfrac12 g(t)^2 s_\theta(x, t)`, solved from prior draws at
    :math:`t = 1` back to ``eps`` with an adaptive torchdiffeq solver (``rtol``/``atol``) or a
    fixed-step one (``method="rk4"``, ``options={"step_size": h}``).

    Example:
        >>> from pyro_gen.diffusion.sde import VESDE
        >>> sde = VESDE(0.01, 5.0)
        >>> score = lambda x, t: -x / (1 + sde.expand(sde.marginal(t)[1], x) ** 2)  # N(0, I)
        >>> x = probability_flow(score, sde, (2000, 2), rtol=1e-3, atol=1e-3)
        >>> bool(abs(x.std() - 1) < 0.1)
        True
    """
    from pyro_gen.transforms.continuous import solve_ode

    eps = _check_eps(eps)
    rtol, atol = _positive("rtol", rtol), _positive("atol", atol)
    x, batch = _start(sde, shape, x_init, generator, dtype, device)

    def func(t: Tensor, z: Tensor) -> Tensor:
        tb = t.to(z.dtype).expand(batch)
        return sde.reverse_drift(z, tb, score_fn(z, tb), probability_flow=True)

    if x.numel() == 0:
        # no samples: an adaptive solver divides by the empty error norm ("underflow in dt")
        return x
    times = torch.tensor([1.0, eps], dtype=x.dtype, device=x.device)
    if options is None:
        options = sde.solver_options(method, 1.0, eps)
    # the solver's "underflow in dt" on an untrained or diverging field, as one clear error
    out = solve_ode(func, x, times, rtol=rtol, atol=atol, method=method, options=options)
    return out[-1]


_LOW_LEVEL = {
    "langevin": annealed_langevin,
    "euler_maruyama": euler_maruyama,
    "pc": predictor_corrector,
    "ode": probability_flow,
}


def sample(
    model: Any,
    num_samples: int,
    sampler: str = "pc",
    *,
    steps: int | None = None,
    stats: dict | None = None,
    context: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Tensor:
    """Draw ``num_samples`` from a score model by sampler name, in data space.

    Args:
        model: a :class:`~pyro_gen.diffusion.score.ScoreModel`, a DDPM (read through
            :class:`~pyro_gen.diffusion.score.DDPMScore`) or any object with ``.sde``,
            ``.score(x, t)`` and ``.event_shape``.
        num_samples: how many.
        sampler: ``"langevin"``, ``"euler_maruyama"``, ``"pc"`` or ``"ode"``.
        steps: time steps (``"langevin"``: noise levels); ignored by ``"ode"``, whose knob is
            ``rtol``/``atol``.
        stats: if given, filled with ``nfe`` (network evaluations), ``seconds`` and
            ``samples_per_second``.
        context: keyword arguments for the network, one row per sample (``{"y": labels}``
            for a model trained with ``model(x, y=labels)``).
        **kwargs: forwarded to the sampler (``eps``, ``snr``, ``rtol``, ``generator``, ...).

    Raises:
        TypeError: when ``model`` cannot provide a score.
        ValueError: for an unknown sampler or a knob out of range.

    Example:
        >>> from pyro_gen.diffusion import build_ddpm
        >>> stats = {}
        >>> sample(build_ddpm((2,), timesteps=10, hidden_dim=8), 4, "pc", steps=5,
        ...        stats=stats).shape, stats["nfe"]
        (torch.Size([4, 2]), 10)
    """
    num_samples = sample_count(num_samples)
    from pyro_gen.diffusion.score import as_score_model

    if sampler not in _LOW_LEVEL:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    sm = as_score_model(model)
    if context:
        expand_context(context, (num_samples,))  # one row per sample, or a clear error
    counted = _Counted(functools.partial(sm.score, **context) if context else sm.score)
    kwargs.setdefault("eps", getattr(sm, "eps", 1e-3))
    if sampler in ("ode", "pc") or kwargs.get("corrector_steps"):
        # these evaluate the score at eps itself (the ODE's last stage, the corrector)
        check_score_at_data_end(sm, kwargs["eps"], f"the {sampler!r} sampler")
    if steps is not None and sampler != "ode":
        kwargs["levels" if sampler == "langevin" else "steps"] = steps
    ref = next(iter(sm.parameters()), None) if hasattr(sm, "parameters") else None
    if ref is not None:
        kwargs.setdefault("dtype", ref.dtype)
        kwargs.setdefault("device", ref.device)
    start = time.perf_counter()
    x = _LOW_LEVEL[sampler](counted, sm.sde, (int(num_samples), *sm.event_shape), **kwargs)
    seconds = time.perf_counter() - start
    if stats is not None:
        stats.update(nfe=counted.calls, seconds=seconds,
                     samples_per_second=num_samples / max(seconds, 1e-12))  # fmt: skip
    to_data = getattr(sm, "from_model_space", None)
    return to_data(x) if to_data is not None else x
