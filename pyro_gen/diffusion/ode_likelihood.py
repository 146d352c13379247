r"""Exact log-likelihoods of score models through the probability-flow ODE.

The probability-flow ODE :math:`\frac{dx}{dt} = \tilde f(x, t) = f(t) x - \tfrac12 g(t)^2
s_\theta(x, t)` is a continuous normalizing flow from the data (time :math:`\epsilon`) to the
prior (time 1), so by the instantaneous change of variables

.. math::

    \log p_\epsilon(x) = \log p_1(x(1)) + \int_\epsilon^1 \nabla \cdot \tilde f(x(t), t)\, dt,

computed by :func:`~pyro_gen.transforms.continuous.ode_log_likelihood` (exact divergence up to
16 dimensions, Hutchinson's estimator beyond). Discrete data (8-bit images) need dequantization:
:func:`probability_flow_bits_per_dim` bounds the discrete log-likelihood by
:math:`\mathbb E_u \log p(y) + D \log \Delta` with :math:`y` the data plus uniform noise within
its bin of width :math:`\Delta` (an unbiased estimate of a lower bound, Song et al. 2021).

References:
    Song et al. Score-Based Generative Modeling through SDEs. arXiv:2011.13456.
    Grathwohl et al. FFJORD. arXiv:1810.01367.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["probability_flow_bits_per_dim", "probability_flow_log_prob"]


def _is_image_ddpm(sm: Any) -> bool:
    ddpm = getattr(sm, "ddpm", None)
    return ddpm is not None and getattr(ddpm, "data", None) == "image"


def probability_flow_log_prob(
    model: Any,
    x: Tensor,
    *,
    eps: float | None = None,
    trace: str | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    prior_log_prob: Any = None,
    _model_space: bool = False,
    **kwargs: Any,
) -> Tensor:
    """:math:`\\log p_\\epsilon(x)` in nats per example, by the probability-flow ODE.

    Args:
        model: a :class:`~pyro_gen.diffusion.score.ScoreModel`, a DDPM on continuous data, or
            any object with ``.sde``, ``.score(x, t)`` and ``.event_shape``.
        x: data, shape ``(batch, *event_shape)``.
        eps: data-end time (default the model's ``eps``: its smallest training time, ``1/T``
            for a DDPM); 0 is allowed for scores finite at :math:`t = 0`.
        trace: ``"exact"`` or ``"hutchinson"`` (default by size).
        rtol: solver relative tolerance.
        atol: solver absolute tolerance.
        method: torchdiffeq solver.
        prior_log_prob: ``z -> log p_1(z)`` (default the SDE's Gaussian prior).
        **kwargs: forwarded to :func:`~pyro_gen.transforms.continuous.odeint_with_logdet`.

    Raises:
        ValueError: for image DDPMs (use :func:`probability_flow_bits_per_dim`, which
            dequantizes), or a tolerance or ``eps`` out of range.

    Example:
        >>> from pyro_gen.diffusion.sde import VPSDE
        >>> class StandardNormal:  # data N(0, I): the score is -x at every t
        ...     sde, event_shape = VPSDE(), (2,)
        ...     def score(self, x, t):
        ...         return -x
        >>> x = torch.randn(3, 2)
        >>> lp = probability_flow_log_prob(StandardNormal(), x, eps=0.0)
        >>> torch.allclose(lp, torch.distributions.Normal(0, 1).log_prob(x).sum(-1), atol=1e-4)
        True
    """
    from pyro_gen.diffusion.score import as_score_model
    from pyro_gen.transforms.continuous import ode_log_likelihood

    sm = as_score_model(model)
    if _is_image_ddpm(sm) and not _model_space:
        raise ValueError(
            "this DDPM models discrete pixels: a density of the raw data is meaningless without "
            "dequantization; use probability_flow_bits_per_dim(model, x, num_bins=...)"
        )
    eps = getattr(sm, "eps", 1e-3) if eps is None else float(eps)
    if not 0 <= eps < 1:
        raise ValueError(f"eps (the data-end time) must lie in [0, 1), got {eps}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not (math.isfinite(tol) and tol > 0):
            raise ValueError(f"{name} must be a positive number, got {tol}")
    event_shape = tuple(sm.event_shape)
    event_dim = len(event_shape)
    if not _model_space and hasattr(sm, "to_model_space"):
        x = sm.to_model_space(x)
    if tuple(x.shape[x.dim() - event_dim :]) != event_shape:
        raise ValueError(f"expected data of shape (batch, *{event_shape}), got {tuple(x.shape)}")
    sde = sm.sde
    batch = x.shape[: x.dim() - event_dim]

    def drift(z: Tensor, t: Tensor) -> Tensor:
        tb = t.to(z.dtype).expand(batch)
        return sde.reverse_drift(z, tb, sm.score(z, tb), probability_flow=True)

    base = prior_log_prob or (lambda z: sde.prior_log_prob(z, event_dim))
    if "options" not in kwargs:
        kwargs["options"] = sde.solver_options(method, eps, 1.0)
    with torch.no_grad():
        return ode_log_likelihood(
            drift, x, eps, 1.0, base, event_dim=event_dim, trace=trace, rtol=rtol, atol=atol,
            method=method, **kwargs,
        )  # fmt: skip


def probability_flow_bits_per_dim(
    model: Any,
    x: Tensor,
    *,
    num_bins: int = 256,
    low: float = -1.0,
    high: float = 1.0,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> Tensor:
    """Bits/dim of discrete data under the probability-flow density, uniformly dequantized.

    Data on the grid of ``num_bins`` levels: a DDPM on images takes its usual input (floats in
    [0, 1] on the levels ``i / (num_bins - 1)``), mapped to its [-1, 1] space; any other model
    takes integers ``0..num_bins-1``, mapped to bins of width
    :math:`\\Delta = (\\text{high} - \\text{low}) / K` of ``[low, high]``. Each example gets one
    uniform draw within its bin, so the mean over a data set estimates the dequantized bound.

    Returns:
        per-example bits/dim, ``-(log p(y) + D log Delta) / (D log 2)``.

    Example:
        >>> from pyro_gen.diffusion.sde import VPSDE
        >>> class StandardNormal:
        ...     sde, event_shape = VPSDE(), (2,)
        ...     def score(self, x, t):
        ...         return -x
        >>> bpd = probability_flow_bits_per_dim(StandardNormal(), torch.tensor([[3, 4]]),
        ...                                     num_bins=8, eps=0.0, rtol=1e-3, atol=1e-3)
        >>> bpd.shape
        torch.Size([1])
    """
    from pyro_gen.diffusion.score import as_score_model

    sm = as_score_model(model)
    if int(num_bins) != num_bins or num_bins < 2:
        raise ValueError(f"num_bins must be a whole number >= 2, got {num_bins}")
    if _is_image_ddpm(sm):
        # the DDPM's levels i / (K - 1) in [0, 1] back to the integers i
        level = (x * (num_bins - 1)).round()
        if not torch.allclose(level / (num_bins - 1), x, atol=1e-4):
            raise ValueError(f"image data must lie on the {num_bins} levels i/{num_bins - 1}")
        low, high = -1.0, 1.0
    else:
        if x.is_floating_point() and not torch.equal(x, x.round()):
            raise ValueError("probability_flow_bits_per_dim takes integer levels 0..num_bins-1")
        level = x.to(torch.get_default_dtype())
    if bool((level < 0).any() or (level > num_bins - 1).any()):
        raise ValueError(f"levels must lie in [0, {num_bins - 1}]")
    width = (high - low) / num_bins
    u = torch.rand(level.shape, generator=generator, dtype=level.dtype, device=level.device)
    y = low + (level + u) * width
    if _is_image_ddpm(sm):
        y = y.reshape(y.shape[:1] + tuple(sm.event_shape))
    lp = probability_flow_log_prob(sm, y, _model_space=True, **kwargs)
    dims = math.prod(sm.event_shape)
    return -(lp + dims * math.log(width)) / (dims * math.log(2))
