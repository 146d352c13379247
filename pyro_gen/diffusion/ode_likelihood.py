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

import contextlib
import math
from typing import Any

import torch
from torch import Tensor

from pyro_gen.diffusion.context import expand_context
from pyro_gen.diffusion.data_end import check_score_at_data_end

__all__ = [
    "ENDPOINTS",
    "probability_flow_bits_per_dim",
    "probability_flow_decoder_bound",
    "probability_flow_log_prob",
]


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
    context: dict[str, Any] | None = None,
    _model_space: bool = False,
    **kwargs: Any,
) -> Tensor:
    """:math:`\\log p_\\epsilon(x)` in nats per example, by the probability-flow ODE.

    An evaluation: the ODE is solved without gradients, so the result does not require grad
    (neither ``x``'s nor the network's gradients are tracked; training uses the score
    matching loss).

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
        context: keyword arguments for the network, one row per example of ``x``
            (``{"y": labels}``: the conditional density :math:`\\log p(x \\mid y)`).
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
    check_score_at_data_end(sm, eps, "probability_flow_log_prob")
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
    context = dict(context or {})
    expand_context(context, batch)  # one row per example, or a clear error

    def drift(z: Tensor, t: Tensor) -> Tensor:
        tb = t.to(z.dtype).expand(batch)
        return sde.reverse_drift(z, tb, sm.score(z, tb, **context), probability_flow=True)

    base = prior_log_prob or (lambda z: sde.prior_log_prob(z, event_dim))
    if "options" not in kwargs:
        kwargs["options"] = sde.solver_options(method, eps, 1.0)
    with torch.no_grad():
        return ode_log_likelihood(
            drift, x, eps, 1.0, base, event_dim=event_dim, trace=trace, rtol=rtol, atol=atol,
            method=method, **kwargs,
        )  # fmt: skip


def _float_dtype(sm: Any) -> torch.dtype:
    """The dtype of the model's first floating parameter, else torch's default."""
    params = sm.parameters() if isinstance(sm, torch.nn.Module) else ()
    return next((p.dtype for p in params if p.is_floating_point()), torch.get_default_dtype())


def _off_the_levels(sm: Any, num_bins: int) -> str:
    """The refusal of data that are not integer levels, naming what the model is: a DDPM on
    continuous data (``data="continuous"``) was told "discrete data for a score model", with no
    word of the density its data do have."""
    ddpm = getattr(sm, "ddpm", None)
    what = (
        "this DDPM models continuous data (data='continuous'):"
        if ddpm is not None
        else f"for continuous data under this {type(sm).__name__},"
    )
    return (
        f"x holds values off the integer levels 0..{num_bins - 1}: the probability-flow "
        "bits/dim and decoder bound are bounds on the probability of discrete data, given as "
        f"those integers (placed on [low, high]); {what} the exact log-density, in nats, is "
        "probability_flow_log_prob(model, x) (a density, not a probability)"
    )


def _levels(sm: Any, x: Tensor, num_bins: int) -> Tensor:
    """The integer levels ``0..num_bins-1`` of discrete data, checked (image DDPMs take their
    usual input, floats ``i / (num_bins - 1)`` in [0, 1]; any other model, a DDPM on
    continuous data included, takes integers)."""
    if int(num_bins) != num_bins or num_bins < 2:
        raise ValueError(f"num_bins must be a whole number >= 2, got {num_bins}")
    if _is_image_ddpm(sm):
        if not x.is_floating_point():
            # integer pixels met torch's "Float did not match Long" in the level check
            raise TypeError(
                f"an image DDPM takes its usual input, floats in [0, 1] on the levels "
                f"i / {num_bins - 1}; got {x.dtype} (pixels 0..{num_bins - 1}: pass "
                f"x.float() / {num_bins - 1})"
            )
        level = (x * (num_bins - 1)).round()
        if not torch.allclose(level / (num_bins - 1), x, atol=1e-4):
            raise ValueError(f"image data must lie on the {num_bins} levels i/{num_bins - 1}")
    else:
        if x.is_floating_point() and not torch.equal(x, x.round()):
            raise ValueError(_off_the_levels(sm, num_bins))
        # integers carry no float dtype: the model's (a float64 network met float32 levels
        # from torch's default and refused them), or the data's own when they are floats
        level = x if x.is_floating_point() else x.to(_float_dtype(sm))
    if bool((level < 0).any() or (level > num_bins - 1).any()):
        raise ValueError(f"levels must lie in [0, {num_bins - 1}]")
    return level


#: how :func:`probability_flow_bits_per_dim` meets discrete data (see its docstring)
ENDPOINTS = ("dequantize", "decoder")


def probability_flow_bits_per_dim(
    model: Any,
    x: Tensor,
    *,
    num_bins: int = 256,
    low: float = -1.0,
    high: float = 1.0,
    endpoint: str = "dequantize",
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> Tensor:
    """Bits/dim of discrete data under the probability-flow density: an upper bound on the
    negative log-probability of the data, estimated per example.

    Two ways to join a continuous density to discrete data (``endpoint``):

    - ``"dequantize"`` (Song et al. 2021, FFJORD): :math:`y` = the data plus uniform noise in
      its bin of width :math:`\\Delta`, and :math:`-\\log p_\\epsilon(y) - D\\log\\Delta`, which
      bounds :math:`-\\log \\int_{\\text{bin}} p_\\epsilon`: the code length of the discrete
      model "the ODE density at the data-end time :math:`\\epsilon`, integrated over each bin".
      When :math:`\\sigma(\\epsilon)` is wider than a bin (a DDPM's first step: 0.01 against
      bins of 2/256 on [-1, 1]) :math:`p_\\epsilon` spreads each level over its neighbours
      and beyond the ends of [-1, 1], so this code is long even under the exact score: on
      two-dimensional data with 256 levels, 60% of them at -1 (like MNIST's black pixels),
      and a 1000-step DDPM, 0.87 nats/dim above :math:`-\\log P(x)`, against 0.27 for
      ``"decoder"`` (closed forms, ``tests/diffusion/test_discrete_likelihood.py``).
    - ``"decoder"`` (:func:`probability_flow_decoder_bound`): the ODE replaces only the
      diffusion's prior-to-:math:`x_{t_1}` part, and the discrete data are decoded from
      :math:`x_{t_1}` (a DDPM's own :math:`p(x_0 \\mid x_1)`, the :math:`L_0` of its bound);
      term by term comparable with the DDPM bound.

    Data on the grid of ``num_bins`` levels: a DDPM on images takes its usual input (floats in
    [0, 1] on the levels ``i / (num_bins - 1)``), mapped to its [-1, 1] space; any other model
    (a DDPM on continuous data too: its data are not levels unless they are these integers, and
    their density is :func:`probability_flow_log_prob`'s) takes integers ``0..num_bins-1``,
    mapped (``"dequantize"``) to bins of width
    :math:`\\Delta = (\\text{high} - \\text{low}) / K` of ``[low, high]``. Each example gets
    one random draw (the uniform noise or :math:`x_{t_1}`), so the mean over a data set
    estimates the expected bound.

    Args:
        model: as for :func:`probability_flow_log_prob`.
        x: discrete data (see above).
        num_bins: number of levels :math:`K`.
        low: lower end of the data range (score models).
        high: upper end of the data range (score models).
        endpoint: ``"dequantize"`` or ``"decoder"``.
        generator: random generator for the draws.
        **kwargs: forwarded to :func:`probability_flow_log_prob`.

    Returns:
        per-example bits/dim: ``-(log p(y) + D log Delta) / (D log 2)`` for ``"dequantize"``,
        the decoder bound's ``"bits_per_dim"`` for ``"decoder"``.

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

    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
    sm = as_score_model(model)
    if endpoint == "decoder":
        out = probability_flow_decoder_bound(
            sm, x, num_bins=num_bins, low=low, high=high, generator=generator, **kwargs
        )
        return out["bits_per_dim"]
    level = _levels(sm, x, num_bins)
    if _is_image_ddpm(sm):
        low, high = -1.0, 1.0
    width = (high - low) / num_bins
    u = torch.rand(level.shape, generator=generator, dtype=level.dtype, device=level.device)
    y = low + (level + u) * width
    if _is_image_ddpm(sm):
        # every batch dim kept (stacked batches (K, B, H, W) too), the channel dim added
        batch = y.shape[: y.dim() - len(sm.ddpm.event_shape)]
        y = y.reshape(batch + tuple(sm.event_shape))
    lp = probability_flow_log_prob(sm, y, _model_space=True, **kwargs)
    dims = math.prod(sm.event_shape)
    return -(lp + dims * math.log(width)) / (dims * math.log(2))


def probability_flow_decoder_bound(
    model: Any,
    x: Tensor,
    *,
    num_bins: int = 256,
    low: float = -1.0,
    high: float = 1.0,
    eps: float | None = None,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> dict[str, Tensor]:
    """A bound on :math:`-\\log P(x)` for discrete data: the probability-flow density of the
    first noisy latent :math:`x_{t_1}` and a discrete decoder from it,

    .. math::

        -\\log P(x) \\le \\mathbb E_{q(x_{t_1} \\mid x)} \\big[-\\log p_{\\text{ODE}}(x_{t_1})
        - \\log p(x \\mid x_{t_1})\\big] - H\\big(q(x_{t_1} \\mid x)\\big),

    with :math:`q(x_{t_1} \\mid x) = \\mathcal N(\\alpha_{t_1} x, \\sigma_{t_1}^2 I)` the forward
    process (Jensen's inequality on :math:`P(x) = \\int p(x_{t_1}) p(x \\mid x_{t_1})`).
    The ODE runs only where the network was trained (from :math:`t_1` to 1), and the data end
    is the model's own: for a DDPM on images :math:`t_1 = 1/T` (step 1) and the decoder is its
    :math:`p_\\theta(x_0 \\mid x_1)`, so the total differs from the DDPM bound
    (:func:`~pyro_gen.diffusion.likelihood.variational_bound`) only in replacing
    :math:`L_T + \\sum_{t \\ge 2} L_{t-1} \\ge \\mathbb E[-\\log p_{\\text{chain}}(x_1)] - H`
    by the ODE's exact :math:`-\\log p_{\\text{ODE}}(x_1)`; this is how Variational Diffusion
    Models treat the data end (Kingma et al. 2021). For any other score model the levels are
    ``low + i (high - low) / (K - 1)`` (where such a model is trained on images mapped to
    [-1, 1]), :math:`t_1` is ``eps`` (default the model's), and the decoder is VDM's
    :math:`p(x \\mid z) \\propto q(z \\mid x)` over the :math:`K` levels of each dimension.

    Args:
        model: as for :func:`probability_flow_log_prob`.
        x: discrete data, as for :func:`probability_flow_bits_per_dim`.
        num_bins: number of levels :math:`K` (a DDPM's must equal its own ``num_bins``).
        low: lower end of the levels (score models).
        high: upper end of the levels (score models).
        eps: :math:`t_1` for score models; a DDPM's is fixed at ``1/T``.
        generator: random generator for the draw of :math:`x_{t_1}` (one per example).
        **kwargs: forwarded to :func:`probability_flow_log_prob`.

    Returns:
        per-example tensors, in nats: ``"ode"`` (:math:`-\\log p_{\\text{ODE}}(x_{t_1})`),
        ``"decoder"`` (:math:`-\\log p(x \\mid x_{t_1})`), ``"entropy"``
        (:math:`H(q(x_{t_1} \\mid x))`, exact), ``"total"`` (= ode + decoder - entropy), and
        ``"bits_per_dim"`` (total / (D ln 2)).

    Example:
        >>> from pyro_gen.diffusion.sde import VPSDE
        >>> class StandardNormal:
        ...     sde, event_shape, eps = VPSDE(), (2,), 1e-3
        ...     def score(self, x, t):
        ...         return -x
        >>> out = probability_flow_decoder_bound(StandardNormal(), torch.tensor([[3, 4]]),
        ...                                      num_bins=8, rtol=1e-3, atol=1e-3)
        >>> sorted(out)
        ['bits_per_dim', 'decoder', 'entropy', 'ode', 'total']
    """
    from pyro_gen.diffusion.score import as_score_model

    sm = as_score_model(model)
    dims = math.prod(tuple(sm.event_shape))
    if _is_image_ddpm(sm):
        ddpm = sm.ddpm
        T = ddpm.schedule.num_timesteps
        if eps is not None and abs(eps - 1.0 / T) > 1e-12:
            raise ValueError(f"a DDPM decodes from its step 1: eps is 1/T = {1.0 / T}, not {eps}")
        if num_bins != ddpm.num_bins:
            raise ValueError(f"num_bins ({num_bins}) must be the DDPM's ({ddpm.num_bins})")
    level = _levels(sm, x, num_bins)
    if _is_image_ddpm(sm):
        t1 = 1.0 / T
        x0 = ddpm.to_model_space(level / (num_bins - 1), outer=True)
    else:
        t1 = getattr(sm, "eps", 1e-3) if eps is None else float(eps)
        x0 = low + level * (high - low) / (num_bins - 1)
    if not 0 < t1 < 1:
        raise ValueError(f"eps (the decoder's time t_1) must lie in (0, 1), got {t1}")
    with torch.no_grad():
        alpha, sigma = sm.sde.marginal(torch.tensor(t1, dtype=torch.float64))
        alpha, sigma = float(alpha), float(sigma)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x1 = alpha * x0 + sigma * noise
        if _is_image_ddpm(sm):
            ddpm = sm.ddpm
            use_ema = getattr(sm, "use_ema", False) and ddpm.ema is not None
            ctx = ddpm.ema.average_parameters() if use_ema else contextlib.nullcontext()
            with ctx:
                p = ddpm.p_mean_logvar(x1, 1, **(kwargs.get("context") or {}))
                decoder = -ddpm.decoder(p["mean"], p["log_var"]).log_prob(x0)
        else:
            # VDM's decoder: each dimension's level by q(z | level) under a flat prior
            grid = torch.linspace(low, high, num_bins, dtype=x0.dtype, device=x0.device)
            logits = -0.5 * ((x1[..., None] - alpha * grid) / sigma) ** 2
            lp_level = logits.log_softmax(-1).gather(-1, level.long()[..., None])[..., 0]
            # summed over the event dims only: flatten(1) took scalar data's batch dim for an
            # event dim (IndexError) and folded a second batch dim into the first
            nd = len(tuple(sm.event_shape))
            decoder = -(lp_level.flatten(lp_level.dim() - nd).sum(-1) if nd else lp_level)
    ode = -probability_flow_log_prob(sm, x1, eps=t1, _model_space=True, **kwargs).detach()
    entropy = torch.full_like(ode, 0.5 * dims * (math.log(2 * math.pi * sigma**2) + 1))
    total = ode + decoder - entropy
    return {
        "ode": ode,
        "decoder": decoder,
        "entropy": entropy,
        "total": total,
        "bits_per_dim": total / (dims * math.log(2)),
    }
