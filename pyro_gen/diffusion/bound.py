r"""The continuous-time variational bound of a score model: Variational Diffusion Models' bound
(Kingma et al. 2021), which is the likelihood-weighted score-matching bound of Song et al. (2021).

The generative model runs the reverse SDE (driven by :math:`s_\theta`) from the prior
:math:`\pi` at :math:`t = 1` down to :math:`t = \epsilon`, then decodes
:math:`x \sim \mathcal N(z_\epsilon/\alpha_\epsilon, (\sigma_\epsilon/\alpha_\epsilon)^2 I)`.
Its negative log-likelihood of a data point :math:`x` (with :math:`D` dimensions) is bounded by

.. math::

    -\log p_\theta(x) \le
    \underbrace{D_{KL}\big(\mathcal N(\alpha_1 x, \sigma_1^2 I) \,\|\, \pi\big)}_{\text{prior}}
    + \underbrace{\tfrac D2 \big(\log(2\pi\sigma_\epsilon^2/\alpha_\epsilon^2) + 1\big)}
        _{\text{reconstruction}}
    + \underbrace{\tfrac12 \int_\epsilon^1 g(t)^2\, \mathbb E_{\epsilon'}
        \big\|s_\theta(x_t, t) + \epsilon'/\sigma_t\big\|^2 dt}_{\text{diffusion}},

with :math:`x_t = \alpha_t x + \sigma_t \epsilon'`. It is the limit :math:`T \to \infty` of the
DDPM bound whose reverse steps are :math:`p(z_s \mid z_t) = q(z_s \mid z_t, \hat x_\theta)`:
each step's KL is :math:`\tfrac12(\mathrm{SNR}_s - \mathrm{SNR}_t)\|x - \hat x_\theta\|^2`,
and with Tweedie's :math:`\hat x_\theta = (x_t + \sigma_t^2 s_\theta)/\alpha_t` the sum tends to
:math:`\tfrac12\int -\mathrm{SNR}'(t)\, \|x - \hat x_\theta\|^2 dt`, where
:math:`-\mathrm{SNR}'\sigma^2/\alpha^2 = \gamma'(t)` and :math:`\gamma'(t)\sigma_t^2 = g(t)^2`
for every linear SDE. So the diffusion term is :math:`(1 - \epsilon)` times the
likelihood-weighted DSM loss (:func:`~pyro_gen.diffusion.score.dsm_loss`,
``weighting="likelihood"``) averaged over :math:`t \sim U(\epsilon, 1)`: training with that
weighting minimises the bound up to the two terms that do not depend on :math:`\theta`.

References:
    Kingma, Salimans, Poole, Ho. Variational Diffusion Models. arXiv:2107.00630.
    Song, Durkan, Murray, Ermon. Maximum Likelihood Training of Score-Based Diffusion Models.
    NeurIPS 2021, arXiv:2101.09258.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_gen.diffusion.context import expand_context
from pyro_gen.diffusion.likelihood import sum_event
from pyro_gen.diffusion.sde import SDE

__all__ = [
    "bound_sites",
    "likelihood_bound",
    "log_snr_inverse",
    "prior_term",
    "reconstruction_term",
]


def prior_term(sde: SDE, x: Tensor, event_dim: int) -> Tensor:
    """:math:`D_{KL}(q(x_1 \\mid x) \\| \\pi)` per example, in closed form."""
    mean, sigma = sde.marginal_params(x, 1.0)
    var_ratio = (sigma / sde.prior_std) ** 2
    kl = 0.5 * (var_ratio + (mean / sde.prior_std) ** 2 - 1 - var_ratio.log())
    return sum_event(kl, event_dim)


def reconstruction_term(sde: SDE, x: Tensor, eps: float, event_dim: int) -> Tensor:
    """:math:`-\\mathbb E \\log \\mathcal N(x; z_\\epsilon/\\alpha_\\epsilon,
    \\sigma_\\epsilon^2/\\alpha_\\epsilon^2)` per example (a constant: the decoder's error is the
    scaled forward noise)."""
    alpha, sigma = sde.marginal(torch.as_tensor(eps, dtype=x.dtype, device=x.device))
    dims = math.prod(x.shape[x.dim() - event_dim :])
    value = 0.5 * dims * (math.log(2 * math.pi) + 2 * (sigma / alpha).log() + 1)
    return value.expand(x.shape[: x.dim() - event_dim])


def _check_eps(sde: SDE, eps: float, like: Tensor) -> float:
    eps = float(eps)
    if not 0 <= eps < 1:
        raise ValueError(f"eps (the bound's data-end time) must lie in [0, 1), got {eps}")
    sigma = float(sde.marginal(torch.as_tensor(eps, dtype=like.dtype))[1].detach())
    if not sigma > 0:
        raise ValueError(
            f"the bound needs sigma(eps) > 0 for its decoder; {type(sde).__name__} has "
            f"sigma({eps}) = 0: raise eps"
        )
    return eps


def log_snr_inverse(sde: SDE, gamma: Tensor, lo: float, hi: float, iters: int = 60) -> Tensor:
    """Times :math:`t \\in [lo, hi]` with :math:`\\gamma(t) = \\log(\\sigma_t^2/\\alpha_t^2)` equal
    to ``gamma`` (bisection; :math:`\\gamma` increases with :math:`t` for every forward SDE)."""
    low = torch.full_like(gamma, lo)
    high = torch.full_like(gamma, hi)
    for _ in range(iters):
        mid = 0.5 * (low + high)
        below = _log_snr(sde, mid) < gamma
        low, high = torch.where(below, mid, low), torch.where(below, high, mid)
    return 0.5 * (low + high)


def _log_snr(sde: SDE, t: Tensor) -> Tensor:
    alpha, sigma = sde.marginal(t)
    return 2 * (sigma.log() - alpha.log())


def likelihood_bound(
    model: Any,
    x: Tensor,
    *,
    eps: float | None = None,
    time_samples: int = 16,
    generator: torch.Generator | None = None,
    context: dict[str, Any] | None = None,
) -> dict[str, Tensor]:
    """The continuous-time bound on :math:`-\\log p_\\theta(x)` (module docstring), in nats.

    The prior and reconstruction terms are exact. The diffusion integral is estimated in the
    log noise-to-signal ratio :math:`\\gamma` (VDM's variable), where it reads
    :math:`\\tfrac12\\int_{\\gamma_\\epsilon}^{\\gamma_1} \\sigma^2\\,\\mathbb E\\|s_\\theta +
    \\epsilon'/\\sigma\\|^2 d\\gamma` (since :math:`g^2 dt = \\sigma^2 d\\gamma`) with a bounded
    integrand; uniform times would weight it by :math:`g^2/\\sigma^2`, which grows like
    :math:`1/t` at a VP SDE's data end. Each example gets ``time_samples`` stratified values of
    :math:`\\gamma` (one in each equal piece, mapped to times by bisection) and one noise draw at
    each: an unbiased estimate.

    Args:
        model: a :class:`~pyro_gen.diffusion.score.ScoreModel`, a DDPM on continuous data, or
            any object with ``.sde``, ``.score(x, t)`` and ``.event_shape``.
        x: data, shape ``(batch, *event_shape)`` or stacked batches ``(K, batch,
            *event_shape)`` (a DDPM's data space); each result keeps ``x``'s batch dims.
        eps: data-end time (default the model's ``eps``); needs :math:`\\sigma(\\epsilon) > 0`.
        time_samples: stratified noise levels per example.
        generator: random generator.
        context: keyword arguments for the network, one row per example (``{"y": labels}``).

    Returns:
        per-example tensors ``"prior"``, ``"reconstruction"``, ``"diffusion"`` and ``"total"``,
        and ``"diffusion_se"``, the standard error of each diffusion estimate (computed as for
        i.i.d. draws, so conservative for stratified ones).

    Raises:
        TypeError: when ``model`` cannot provide a score.
        ValueError: for an image DDPM (discrete pixels: use ``variational_bound`` or
            ``probability_flow_bits_per_dim``), a bad shape, ``eps`` or ``time_samples``.

    Example:
        >>> from pyro_gen.diffusion.sde import VPSDE
        >>> class StandardNormal:  # data N(0, I): the score is -x at every t
        ...     sde, event_shape, eps = VPSDE(), (2,), 1e-3
        ...     def score(self, x, t):
        ...         return -x
        >>> out = likelihood_bound(StandardNormal(), torch.zeros(1, 2), time_samples=256)
        >>> exact = -torch.distributions.Normal(0, 1).log_prob(torch.zeros(2)).sum()
        >>> bool(abs(out["total"] - exact) < 4 * out["diffusion_se"])  # tight with the true score
        True
    """
    from pyro_gen.diffusion.ode_likelihood import _is_image_ddpm
    from pyro_gen.diffusion.score import as_score_model, dsm_loss

    sm = as_score_model(model)
    if _is_image_ddpm(sm):
        raise ValueError(
            "this DDPM models discrete pixels: use variational_bound(ddpm, x) for its bound, or "
            "probability_flow_bits_per_dim for a dequantized density"
        )
    if isinstance(time_samples, bool) or int(time_samples) != time_samples or time_samples < 1:
        raise ValueError(f"time_samples must be a whole number >= 1, got {time_samples!r}")
    K = int(time_samples)
    event_shape = tuple(sm.event_shape)
    event_dim = len(event_shape)
    if x.dim() < event_dim + 1 or tuple(x.shape[x.dim() - event_dim :]) != event_shape:
        raise ValueError(
            f"expected data of shape (batch, *{event_shape}) or stacked batches (K, batch, "
            f"*{event_shape}), got {tuple(x.shape)}"
        )
    sde = sm.sde
    eps = _check_eps(sde, getattr(sm, "eps", 1e-3) if eps is None else eps, x)
    # stacked batches as one flat batch (each example's terms are its own), reshaped back
    batch = x.shape[: x.dim() - event_dim]
    x = x.reshape(-1, *event_shape)
    B = x.shape[0]
    # one row per example of the last batch dim (or a clear error), expanded to the B rows
    context = expand_context(context or {}, batch)
    with torch.no_grad():
        ends = _log_snr(sde, torch.tensor([eps, 1.0], dtype=torch.float64, device=x.device))
        g0, g1 = float(ends[0]), float(ends[1])
        u = torch.rand((K, B), generator=generator, dtype=torch.float64, device=x.device)
        strata = torch.arange(K, dtype=torch.float64, device=x.device)[:, None]
        gamma = g0 + (g1 - g0) * (strata + u) / K
        t = log_snr_inverse(sde, gamma, eps, 1.0).to(x.dtype)
        noise = torch.randn((K, *x.shape), generator=generator, dtype=x.dtype, device=x.device)
        x_k = x.expand((K, *x.shape))
        score = functools.partial(sm.score, **context) if context else sm.score
        terms = (g1 - g0) * dsm_loss(score, sde, x_k, t, noise, event_dim, "sigma2")
        diffusion = terms.mean(0)
        se = terms.std(0) / math.sqrt(K) if K > 1 else torch.full_like(diffusion, math.nan)
        prior = prior_term(sde, x, event_dim)
        recon = reconstruction_term(sde, x, eps, event_dim)
    out = {
        "prior": prior,
        "reconstruction": recon,
        "diffusion": diffusion,
        "total": prior + recon + diffusion,
        "diffusion_se": se,
    }
    return {name: value.reshape(batch) for name, value in out.items()}


def bound_sites(sde: SDE, x: Tensor, eps: float, event_dim: int, model: bool) -> None:
    """The prior and reconstruction terms as Pyro sites, under the caller's ``"data"`` plate.

    ``"x_1"``: :math:`\\pi` in the model, :math:`q(x_1 \\mid x)` in the guide (their ELBO term
    is minus the prior KL; ``TraceMeanField_ELBO`` computes it in closed form).
    ``"x_eps"``: :math:`q(x_\\epsilon \\mid x)` in both (contributes zero), then the model
    observes ``"x"`` from the decoder :math:`\\mathcal N(x_\\epsilon/\\alpha_\\epsilon,
    \\sigma_\\epsilon^2/\\alpha_\\epsilon^2)` (minus the reconstruction term).
    """
    # the SDE's own coefficients (no range check: both times are fixed and valid)
    a1, s1 = sde.marginal(torch.ones((), dtype=x.dtype, device=x.device))
    mean1, std1 = a1 * x, s1.expand_as(x)
    if model:
        prior = dist.Normal(torch.zeros_like(mean1), sde.prior_std * torch.ones_like(std1))
        pyro.sample("x_1", prior.to_event(event_dim))
    else:
        pyro.sample("x_1", dist.Normal(mean1, std1).to_event(event_dim))
    a, s = sde.marginal(torch.as_tensor(eps, dtype=x.dtype, device=x.device))
    z = pyro.sample("x_eps", dist.Normal(a * x, s.expand_as(x)).to_event(event_dim))
    if model:
        decoder = dist.Normal(z / a, (s / a).expand_as(z))
        pyro.sample("x", decoder.to_event(event_dim), obs=x)
