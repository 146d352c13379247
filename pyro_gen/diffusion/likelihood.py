"""Terms of the DDPM variational bound: the discretized Gaussian decoder :math:`L_0`, Gaussian
KLs, the closed-form prior term :math:`L_T`, and the whole bound (in nats and bits/dim).

.. math::

    -\\log p_\\theta(x_0) \\le
    \\underbrace{D_{KL}(q(x_T \\mid x_0) \\,\\|\\, p(x_T))}_{L_T}
    + \\sum_{t=2}^T \\underbrace{\\mathbb E_{q(x_t \\mid x_0)}
    D_{KL}(q(x_{t-1} \\mid x_t, x_0) \\,\\|\\, p_\\theta(x_{t-1} \\mid x_t))}_{L_{t-1}}
    \\underbrace{- \\mathbb E_{q(x_1 \\mid x_0)} \\log p_\\theta(x_0 \\mid x_1)}_{L_0}.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from pyro.distributions import TorchDistribution, constraints

from pyro_gen.diffusion.context import expand_context, slice_context

if TYPE_CHECKING:
    from pyro_gen.diffusion.ddpm import DDPM

_EMPTY = torch.Size()

__all__ = [
    "DiscretizedGaussian",
    "normal_kl",
    "prior_kl",
    "sampled_variational_bound",
    "sum_event",
    "variational_bound",
]


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """Elementwise :math:`D_{KL}(\\mathcal N(m_1, e^{l_1}) \\,\\|\\, \\mathcal N(m_2, e^{l_2}))`
    :math:`= \\tfrac12 (l_2 - l_1 + e^{l_1 - l_2} + (m_1 - m_2)^2 e^{-l_2} - 1)`.

    Example:
        >>> z = torch.zeros(2)
        >>> normal_kl(z, z, z, z)
        tensor([0., 0.])
    """
    return 0.5 * (logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2) ** 2
                  * (-logvar2).exp() - 1.0)  # fmt: skip


class DiscretizedGaussian(TorchDistribution):
    """A Gaussian integrated over the bins of ``num_bins`` evenly spaced levels in [-1, 1].

    For a level :math:`x` with half bin width :math:`\\delta = 1/(K-1)`,

    .. math::

        P(x) = \\Phi\\Big(\\frac{x + \\delta - \\mu}{\\sigma}\\Big)
             - \\Phi\\Big(\\frac{x - \\delta - \\mu}{\\sigma}\\Big),

    with the outermost bins extended to :math:`\\pm\\infty`, so the probabilities of the
    :math:`K` levels sum to one and :math:`-\\log P` is a code length for 8-bit pixels
    (``num_bins=256``). Values are expected on the grid :math:`-1 + 2i/(K-1)`.

    References:
        Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models (eq. 13). arXiv:2006.11239.

    Example:
        >>> d = DiscretizedGaussian(torch.zeros(()), torch.tensor(0.5), num_bins=5)
        >>> levels = torch.linspace(-1, 1, 5)
        >>> round(float(d.log_prob(levels).exp().sum()), 5)
        1.0
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.interval(-1.0, 1.0)
    has_rsample = False

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        num_bins: int = 256,
        validate_args: bool | None = None,
    ) -> None:
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(scale))
        self.num_bins = int(num_bins)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):  # noqa: D102
        batch_shape = torch.Size(batch_shape)
        # the instance's validate_args, as Pyro's expand keeps it: a plate scores the
        # expanded copy, which otherwise fell back to the global flag
        return DiscretizedGaussian(
            self.loc.expand(batch_shape),
            self.scale.expand(batch_shape),
            self.num_bins,
            validate_args=self._validate_args,
        )

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        half = 1.0 / (self.num_bins - 1)
        upper = (value + half - self.loc) / self.scale
        lower = (value - half - self.loc) / self.scale
        # Phi(u) - Phi(l) loses every digit when both are near 1; use the mirrored tail then.
        flip = lower > 0
        hi = torch.where(flip, -lower, upper)
        lo = torch.where(flip, -upper, lower)
        log_hi = torch.special.log_ndtr(hi)
        log_lo = torch.special.log_ndtr(lo)
        diff = -torch.expm1((log_lo - log_hi).clamp(max=-1e-12))
        log_mid = log_hi + diff.clamp(min=1e-30).log()
        eps = 1e-3 * half
        log_left = torch.special.log_ndtr(upper)  # bin extends to -inf
        log_right = torch.special.log_ndtr(-lower)  # bin extends to +inf
        return torch.where(
            value < -1 + eps, log_left, torch.where(value > 1 - eps, log_right, log_mid)
        )

    def sample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            x = self.loc.expand(shape) + self.scale.expand(shape) * torch.randn(
                shape, dtype=self.loc.dtype, device=self.loc.device
            )
            k = self.num_bins - 1
            return (((x.clamp(-1, 1) + 1) * k / 2).round() * 2 / k - 1).clamp(-1, 1)


def sum_event(value: torch.Tensor, event_dim: int) -> torch.Tensor:
    """``value`` summed over its ``event_dim`` rightmost dims, every batch dim kept (stacked
    batches ``(K, B, *event)`` too: ``flatten(1)`` folded their second batch dim into the
    event).

    Example:
        >>> sum_event(torch.ones(3, 4, 2), 1).shape, sum_event(torch.ones(3), 0).shape
        (torch.Size([3, 4]), torch.Size([3]))
    """
    return value.flatten(value.dim() - event_dim).sum(-1) if event_dim else value


def _flat_examples(
    ddpm: DDPM, x: torch.Tensor, context: dict[str, Any] | None
) -> tuple[torch.Tensor, torch.Size, dict[str, Any]]:
    """Data in the model's space as one flat batch ``(N, *net_shape)``, its batch shape
    (``(K, B)`` for stacked batches), and ``context`` expanded to the ``N`` rows.

    Why: the bound helpers chunk their examples by ``batch_size`` along one dim, so data with
    extra leading batch dims, which the network itself takes, were refused ("expected data of
    shape (batch, 2)"); each example's terms do not depend on the others, so the flat batch's
    results reshaped to ``batch`` are the per-slice results.
    """
    x0 = ddpm.to_model_space(x, outer=True)
    batch = x0.shape[: x0.dim() - ddpm.event_dim]
    # one row per example of the last batch dim, or a clear error
    context = expand_context(dict(context or {}), batch)
    return x0.reshape(-1, *ddpm.net_shape), batch, context


def prior_kl(ddpm: DDPM, x0: torch.Tensor) -> torch.Tensor:
    """Closed-form :math:`L_T = D_{KL}(q(x_T \\mid x_0) \\| \\mathcal N(0, I))` per example, in
    nats; ``x0`` in the model's space (images already mapped to [-1, 1]), of any batch shape.

    Example:
        >>> from pyro_gen.diffusion import build_ddpm
        >>> m = build_ddpm((2,), timesteps=4, hidden_dim=8)
        >>> prior_kl(m, torch.zeros(3, 5, 2)).shape
        torch.Size([3, 5])
    """
    schedule, ndim = ddpm.schedule, ddpm.event_dim
    batch = x0.shape[: x0.dim() - ndim]
    t = torch.full(batch, schedule.num_timesteps, dtype=torch.long, device=x0.device)
    mean, std = schedule.q_mean_std(x0, t, ndim)
    kl = normal_kl(mean, 2 * std.log(), torch.zeros_like(mean), torch.zeros_like(mean))
    return sum_event(kl, ndim)


@torch.no_grad()
def variational_bound(
    ddpm: DDPM,
    x: torch.Tensor,
    *,
    batch_size: int = 256,
    timesteps: torch.Tensor | None = None,
    progress: bool = False,
    context: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """The DDPM bound on :math:`-\\log p(x)`, every one of its :math:`T + 1` terms computed.

    :math:`L_T` and each KL are exact Gaussian formulas; only the expectation over
    :math:`x_t \\sim q(x_t \\mid x_0)` is a single Monte Carlo draw per term. For image models
    the total is a code length for 8-bit pixels, so ``bits_per_dim`` = nats / (D ln 2) with no
    change-of-variables correction. Cost: ``T`` network passes per example.

    Args:
        ddpm: a :class:`~pyro_gen.diffusion.DDPM`.
        x: data in the model's input format (images: floats in [0, 1]), ``(batch,
            *event_shape)`` or stacked batches ``(K, batch, *event_shape)``; each result keeps
            ``x``'s batch dims.
        batch_size: examples per network pass.
        timesteps: optionally a subset of steps (1-based) to evaluate; the sum is then
            rescaled by ``T / len(timesteps)`` (an approximation, unbiased only when the subset
            is drawn uniformly at random).
        progress: show a tqdm bar over the time steps.
        context: keyword arguments for the network, one row per example of ``x``'s last batch
            dim (``{"y": labels}``:
            the bound on :math:`-\\log p(x \\mid y)` of a conditional DDPM).

    Returns:
        dict with per-example tensors ``"prior"`` (:math:`L_T`), ``"terms"`` (shape
        ``(*batch, T)``, column ``t - 1`` is :math:`L_{t-1}`, column 0 is :math:`L_0`), ``"total"``
        (nats) and ``"bits_per_dim"``.

    Example:
        >>> from pyro_gen.diffusion import build_ddpm
        >>> m = build_ddpm((2,), timesteps=4, hidden_dim=8)
        >>> out = variational_bound(m, torch.randn(3, 2))
        >>> out["terms"].shape, out["total"].shape
        (torch.Size([3, 4]), torch.Size([3]))
    """
    from tqdm.auto import tqdm

    T = ddpm.schedule.num_timesteps
    steps = torch.arange(1, T + 1) if timesteps is None else torch.as_tensor(timesteps).long()
    x0_all, batch, context = _flat_examples(ddpm, x, context)
    priors, terms = [], []
    for start in range(0, x0_all.shape[0], batch_size):
        x0 = x0_all[start : start + batch_size]
        chunk = slice_context(context, start, start + batch_size)
        priors.append(prior_kl(ddpm, x0))
        # the terms' own dtype: a float64 model's bound is not rounded to float32
        cols = priors[-1].new_zeros(x0.shape[0], T)
        for t_val in tqdm(steps.tolist(), disable=not progress, desc="bound", leave=False):
            cols[:, t_val - 1] = ddpm.step_term(x0, t_val, **chunk)
        terms.append(cols)
    prior, terms_t = torch.cat(priors).reshape(batch), torch.cat(terms).reshape(batch + (T,))
    total = prior + terms_t.sum(-1) * (T / len(steps))
    dims = math.prod(ddpm.event_shape)
    return {
        "prior": prior,
        "terms": terms_t,
        "total": total,
        "bits_per_dim": total / (dims * math.log(2)),
    }


def geometric_strata(first: int, last: int, strata: int) -> torch.Tensor:
    """Edges ``e_0 = first < e_1 < ... = last + 1`` of about ``strata`` integer intervals
    ``[e_k, e_{k+1})`` of geometrically growing length (the bound's terms fall like ``1/t``,
    so equal-length strata would leave most of the variance in the first)."""
    import numpy as np

    edges = np.unique(np.round(np.geomspace(first, last + 1, strata + 1)).astype(np.int64))
    return torch.as_tensor(edges)


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal draws shaped like ``like``, made where ``generator`` lives (a CPU
    generator cannot draw on CUDA) and moved to ``like``'s device."""
    at = like.device if generator is None else generator.device
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=at)
    return noise.to(like.device)


@torch.no_grad()
def sampled_variational_bound(
    ddpm: DDPM,
    x: torch.Tensor,
    *,
    strata: int = 16,
    exact_steps: int = 1,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    context: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    r"""An unbiased estimate of :func:`variational_bound`'s total at a fraction of its cost.

    :math:`L_T` is exact and the first ``exact_steps`` terms (:math:`L_0` included) are
    computed as in :func:`variational_bound`; the remaining steps are split into ``strata``
    intervals of geometrically growing length :math:`n_k` and each example draws its own step
    :math:`t_k` uniformly in each, so :math:`\sum_k n_k L_{t_k - 1}` has the expectation of
    the sum over those steps (stratified sampling). It is the DDPM time plate's estimate
    (``time_samples`` uniform steps scaled by ``T / time_samples``) with the steps spread by
    importance: the terms fall roughly like :math:`1/t`, so equal strata leave most of the
    variance in the first. Cost: ``exact_steps + strata`` network passes per example.

    The draws are independent across examples, so the standard error of a mean over examples
    (their standard deviation over :math:`\sqrt N`) includes the step and :math:`x_t`
    sampling.

    Args:
        ddpm: a :class:`~pyro_gen.diffusion.DDPM`.
        x: data in the model's input format (images: floats in [0, 1]), ``(batch,
            *event_shape)`` or stacked batches ``(K, batch, *event_shape)``; each result keeps
            ``x``'s batch dims.
        strata: number of step intervals sampled (at most the steps left).
        exact_steps: steps ``1..exact_steps`` computed for every example (at least 1, so the
            decoder term :math:`L_0`, the largest, is never sampled).
        batch_size: examples per network pass.
        generator: random generator for the steps and the draws of :math:`x_t`.
        context: keyword arguments for the network, one row per example (of ``x``'s last
            batch dim).

    Returns:
        dict with per-example tensors ``"prior"`` (:math:`L_T`), ``"exact"`` (the first
        ``exact_steps`` terms), ``"sampled"`` (the estimate of the rest), ``"total"`` (nats) and
        ``"bits_per_dim"``, and ``"edges"``, the strata's first steps (and ``T + 1``).

    Example:
        >>> from pyro_gen.diffusion import build_ddpm
        >>> m = build_ddpm((2,), timesteps=50, hidden_dim=8)
        >>> out = sampled_variational_bound(m, torch.randn(3, 2), strata=4)
        >>> out["total"].shape, out["edges"].tolist()
        (torch.Size([3]), [2, 4, 10, 23, 51])
    """
    T = ddpm.schedule.num_timesteps
    if isinstance(exact_steps, bool) or int(exact_steps) != exact_steps or exact_steps < 1:
        raise ValueError(f"exact_steps must be a whole number >= 1, got {exact_steps!r}")
    exact_steps = int(exact_steps)
    if exact_steps > T:
        raise ValueError(f"exact_steps ({exact_steps}) exceeds the DDPM's T = {T}")
    if isinstance(strata, bool) or int(strata) != strata or strata < 1:
        raise ValueError(f"strata must be a whole number >= 1, got {strata!r}")
    left = T - exact_steps
    edges = geometric_strata(exact_steps + 1, T, min(int(strata), left)) if left else None
    x0_all, batch, context = _flat_examples(ddpm, x, context)
    priors, exacts, sampled = [], [], []
    for start in range(0, x0_all.shape[0], batch_size):
        x0 = x0_all[start : start + batch_size]
        chunk = slice_context(context, start, start + batch_size)
        B = x0.shape[0]
        priors.append(prior_kl(ddpm, x0))
        # the exact steps' draws of x_t from the generator too: they came from the global
        # random state, so a seeded generator did not repeat the total
        exacts.append(
            sum(
                ddpm.step_term(x0, t, _randn(x0, generator), **chunk)
                for t in range(1, exact_steps + 1)
            )
        )
        est = x0.new_zeros(B)
        if edges is not None:
            for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
                # drawn where the generator lives (a CPU generator cannot draw on CUDA)
                at = x0.device if generator is None else generator.device
                u = torch.rand(B, generator=generator, device=at).to(x0.device)
                t = lo + (u * (hi - lo)).long().clamp(max=hi - lo - 1)
                est = est + (hi - lo) * ddpm.kl_term(x0, t, _randn(x0, generator), **chunk)
        sampled.append(est)
    prior, exact, rest = (torch.cat(v).reshape(batch) for v in (priors, exacts, sampled))
    total = prior + exact + rest
    dims = math.prod(ddpm.event_shape)
    return {
        "prior": prior,
        "exact": exact,
        "sampled": rest,
        "total": total,
        "bits_per_dim": total / (dims * math.log(2)),
        "edges": edges if edges is not None else torch.tensor([T + 1]),
    }
