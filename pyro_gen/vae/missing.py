"""Missing data: VAEs trained on incomplete examples, and imputation of what is missing.

An example :math:`x` is split by a mask :math:`m` (``True`` = observed) into
:math:`x_{\\mathrm{obs}}` and :math:`x_{\\mathrm{mis}}`. The VAE's likelihood factorizes over
pixels, so the missing pixels integrate out of :math:`p(x \\mid z)` exactly: the model
scores only the observed ones,

.. math:: p(x_{\\mathrm{obs}} \\mid z) = \\prod_{i : m_i = 1} p(x_i \\mid z),

by masking the decoder's per-pixel distribution before its pixels become one event (Pyro's
``Distribution.mask``; ``poutine.mask`` masks whole examples, not pixels). The encoder sees
the example with its missing pixels set to zero. Trained with the importance weighted bound
of :func:`~pyro_gen.vae.objectives.iwae`, this is MIWAE, and
:func:`pyro_gen.infer.iwae_log_likelihood` of the same masked data estimates
:math:`\\log p(x_{\\mathrm{obs}})`. :func:`impute` fills the missing pixels by
self-normalised importance sampling with the guide as proposal.

Every VAE of :class:`~pyro_gen.vae.VAE` takes ``mask=`` in its model and built-in guide, so
``fit(vae, {"x": x, "mask": m}, loss=iwae(50))`` trains MIWAE.

References:
    Mattei & Frellsen, MIWAE: Deep Generative Modelling and Imputation of Incomplete Data
    Sets, ICML 2019, arXiv:1812.02633.
    Nazabal et al., Handling Incomplete Heterogeneous Data using VAEs, arXiv:1807.03653.
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_gen.infer.module_modes import module_modes, restore_modes
from pyro_gen.vae.sites import LATENT


def check_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The observation mask of ``x`` as a boolean tensor, after checking it.

    Args:
        x: a batch of examples.
        mask: same shape as ``x``; ``True`` (or 1) where the value is observed, ``False``
            (or 0) where it is missing.

    Raises:
        ValueError: the shapes differ, or a numeric mask holds values other than 0 and 1.

    Example:
        >>> check_mask(torch.zeros(2, 3), torch.tensor([[1, 0, 1], [1, 1, 0]])).dtype
        torch.bool
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a tensor of the shape of x, got {type(mask).__name__}")
    if mask.shape != x.shape:
        raise ValueError(
            f"mask must have the shape of x, {tuple(x.shape)} (one entry per value, True "
            f"where observed), got {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        return mask
    if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be boolean or hold only 0 (missing) and 1 (observed)")
    return mask != 0


def observed_rows(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """What an encoder reads of a batch: one floating-point row per example, its missing
    entries set to zero (the input of the ``"auto"`` guides of pyro_gen's VAEs).

    Example:
        >>> observed_rows(torch.ones(2, 2, 2, dtype=torch.uint8)).shape
        torch.Size([2, 4])
    """
    rows = fill_missing(x, mask).reshape(x.shape[0], -1)
    return rows if rows.is_floating_point() else rows.to(torch.get_default_dtype())


def fill_missing(x: torch.Tensor, mask: torch.Tensor | None, value: float = 0.0) -> torch.Tensor:
    """``x`` with its missing entries set to ``value`` (what the encoder sees; NaNs placed
    at missing entries are replaced too).

    Example:
        >>> fill_missing(torch.tensor([0.5, float("nan")]), torch.tensor([True, False]))
        tensor([0.5000, 0.0000])
    """
    if mask is None:
        return x
    mask = check_mask(x, mask)
    return torch.where(mask, x, torch.full((), value, dtype=x.dtype, device=x.device))


def mask_pixels(px: dist.TorchDistribution, mask: torch.Tensor | None) -> dist.Distribution:
    """The likelihood ``px`` (an ``Independent`` over pixels) scoring only the pixels where
    ``mask`` is true: :math:`\\log p(x_{\\mathrm{obs}} \\mid z)`.

    The mask applies to the per-pixel distribution, whose batch shape is
    ``(..., batch, *event_shape)``, before those dimensions become the event.

    Example:
        >>> px = dist.Normal(torch.zeros(2, 3), 1.0).to_event(1)
        >>> m = torch.tensor([[True, False, False], [True, True, True]])
        >>> one = dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.0))
        >>> (mask_pixels(px, m).log_prob(torch.zeros(2, 3)) / one).round().tolist()
        [1.0, 3.0]
    """
    if mask is None:
        return px
    if not isinstance(px, dist.Independent):
        raise TypeError(
            f"masking pixels needs a likelihood that is independent over pixels "
            f"(pyro.distributions.Independent), got {type(px).__name__}"
        )
    return px.base_dist.mask(mask).to_event(px.reinterpreted_batch_ndims)


def _log_weights_and_latents(
    vae: Any, x: torch.Tensor, mask: torch.Tensor, num_particles: int, context: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log w (K, B), z (K, B, ...))``: particles of the guide with their importance
    log-weights :math:`\\log p(x_{obs}, z) - \\log q(z \\mid x_{obs})` per example."""
    with pyro.plate("_impute_particles", num_particles, dim=-2):
        guide_trace = poutine.trace(vae.guide).get_trace(x, mask=mask, **context)
        replayed = poutine.replay(vae.model, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(x, mask=mask, **context)
    log_w = torch.zeros(num_particles, x.shape[0], device=x.device)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                if trace is guide_trace and site["is_observed"]:
                    continue
                log_w = log_w + sign * site["log_prob"].expand_as(log_w)
    return log_w, model_trace.nodes[LATENT]["value"]


def _context_tensor(vae: Any, context: dict[str, Any]) -> torch.Tensor | None:
    return vae._context(context.get("y")) if hasattr(vae, "_context") else None


@torch.no_grad()
def impute(
    vae: Any,
    x: torch.Tensor,
    mask: torch.Tensor,
    *,
    guide: Any = None,
    site: str | None = None,
    num_samples: int = 1000,
    num_imputations: int | None = None,
    chunk: int = 250,
    **context: Any,
) -> torch.Tensor:
    """Fills the missing entries of ``x`` by self-normalised importance sampling.

    With :math:`K` = ``num_samples`` draws :math:`z_k \\sim q(z \\mid x_{obs})` from the
    VAE's guide and weights :math:`w_k \\propto p(x_{obs}, z_k) / q(z_k \\mid x_{obs})`
    (normalised to sum to one), the single imputation is the estimate of the conditional
    mean

    .. math:: \\mathbb{E}[x_{mis} \\mid x_{obs}] \\approx \\sum_{k=1}^K w_k\\,
              \\mathbb{E}[x_{mis} \\mid z_k],

    consistent as :math:`K \\to \\infty` whatever the guide (a good guide needs fewer
    draws). With ``num_imputations`` :math:`M`, each imputation instead resamples one
    :math:`z_k` by its weight and draws :math:`x_{mis} \\sim p(x_{mis} \\mid z_k)`
    (sampling importance resampling): approximate draws from :math:`p(x_{mis} \\mid x_{obs})`
    for multiple imputation. Observed entries are returned unchanged.

    Any Pyro model works: ``impute(model, x, mask, guide=guide)`` calls
    ``model(x, mask=mask, **context)`` and the guide alike (missing entries of ``x`` set to
    zero), and reads :math:`p(x \\mid z_k)` from the model's observed site, which must
    observe ``x`` itself (a reshaped view is fine) and mask its likelihood with ``mask``
    (``dist.Bernoulli(logits=...).mask(mask)``); the site's distribution needs a ``mean``
    for the single imputation. A model with global latents is refused: their draws would
    couple the examples' weights.

    Args:
        vae: a pyro_gen VAE (a module with ``model`` and ``guide`` taking ``mask=``), or a
            Pyro model callable with ``guide=``; ideally trained on incomplete data with
            the same kind of mask.
        x: a batch of examples; missing entries may hold anything, NaN included.
        mask: ``True`` where observed, same shape as ``x``.
        guide: a Pyro guide for ``vae`` (required for a model callable; default the
            module's ``guide``).
        site: the model's observed site of ``x`` (default: its only observed site in the
            data plate).
        num_samples: :math:`K`, importance samples per example.
        num_imputations: :math:`M`; None gives the single (conditional-mean) imputation.
        chunk: particles drawn at once (memory grows with ``chunk`` x batch x pixels).
        **context: further model arguments, e.g. ``y=`` for a conditional VAE.

    Returns:
        ``x`` completed, shape ``x.shape``, or ``(M, *x.shape)`` with ``num_imputations``;
        floating point (integer pixels are filled with fractions, the model's means).

    References:
        Mattei & Frellsen, MIWAE, arXiv:1812.02633 (section 3).

    Example:
        >>> from pyro_gen.vae import VAE
        >>> vae = VAE((4, 4), z_dim=2, hidden_dim=8)
        >>> x = torch.rand(3, 4, 4).round()
        >>> m = torch.rand(3, 4, 4) < 0.5
        >>> filled = impute(vae, x, m, num_samples=20)
        >>> bool((filled[m] == x[m]).all()), bool(((filled >= 0) & (filled <= 1)).all())
        (True, True)
        >>> impute(vae, x, m, num_samples=20, num_imputations=5).shape
        torch.Size([5, 3, 4, 4])
    """
    for name, value in (("num_samples", num_samples), ("chunk", chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_imputations is not None and (
        isinstance(num_imputations, bool)
        or not isinstance(num_imputations, int)
        or num_imputations < 1
    ):
        raise ValueError(
            f"num_imputations must be a positive integer or None, got {num_imputations!r}"
        )
    mask = check_mask(x, mask)
    x_in = fill_missing(x, mask)
    from pyro_gen.vae.vae import VAE

    if guide is not None or site is not None or not isinstance(vae, VAE):
        from pyro_gen.vae.imputation import impute_with_guide

        return impute_with_guide(
            vae,
            guide,
            x_in,
            mask,
            site=site,
            num_samples=num_samples,
            num_imputations=num_imputations,
            chunk=chunk,
            context=context,
        )
    ctx = _context_tensor(vae, context)
    modes = module_modes([vae])  # given back module by module: a frozen part stays frozen
    vae.eval()
    try:
        log_ws, zs = [], []
        for start in range(0, num_samples, chunk):
            log_w, z = _log_weights_and_latents(
                vae, x_in, mask, min(chunk, num_samples - start), context
            )
            log_ws.append(log_w)
            zs.append(z)
        log_w, z = torch.cat(log_ws), torch.cat(zs)  # (K, B), (K, B, ...)
        if num_imputations is None:
            # sum over chunks of particles of softmax weight x decoder mean, one chunk at a time
            weights = torch.softmax(log_w, 0)
            filled = torch.zeros_like(x_in)
            for start in range(0, num_samples, chunk):
                stop = min(start + chunk, num_samples)
                means = vae.decoder.mean(z[start:stop], ctx).to(x_in.dtype)
                w = weights[start:stop].reshape(weights[start:stop].shape + (1,) * (x.dim() - 1))
                filled = filled + (w * means).sum(0)
        else:
            picks = dist.Categorical(logits=log_w.T).sample((num_imputations,))  # (M, B)
            index = picks.reshape(picks.shape + (1,) * (z.dim() - 2)).expand(
                (num_imputations, *z.shape[1:])
            )
            chosen = torch.gather(z, 0, index)  # (M, B, ...)
            filled = vae.decoder(chosen, context=ctx).sample()
            if not filled.is_floating_point():  # categorical levels back to [0, 1]
                filled = filled.to(x_in.dtype) / (vae.decoder.likelihood.num_params - 1)
            filled = filled.to(x_in.dtype)
    finally:
        restore_modes(modes)
    return torch.where(mask, x_in, filled)


def effective_sample_size(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Kish's effective sample size :math:`(\\sum_k w_k)^2 / \\sum_k w_k^2` of importance
    log-weights along ``dim``: how many equally weighted draws they are worth.

    Example:
        >>> effective_sample_size(torch.zeros(10, 2)).tolist()
        [10.0, 10.0]
    """
    return torch.exp(2 * torch.logsumexp(log_weights, dim) - torch.logsumexp(2 * log_weights, dim))


def missing_at_random(
    shape: tuple[int, ...] | torch.Size, rate: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A mask with each entry missing independently with probability ``rate`` (MCAR).

    Example:
        >>> m = missing_at_random((1000, 10), 0.5, torch.Generator().manual_seed(0))
        >>> abs(m.float().mean().item() - 0.5) < 0.02
        True
    """
    if not (isinstance(rate, float | int) and 0 <= rate < 1 and math.isfinite(rate)):
        raise ValueError(f"the missing rate must be in [0, 1), got {rate!r}")
    return torch.rand(tuple(shape), generator=generator) >= rate


__all__ = [
    "check_mask",
    "effective_sample_size",
    "fill_missing",
    "impute",
    "mask_pixels",
    "missing_at_random",
]
