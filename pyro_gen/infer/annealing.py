"""KL annealing: scale the latent sites of any model/guide pair by a schedule.

Scaling a latent site by :math:`\\beta` in both model and guide turns the ELBO into

.. math::

    \\mathbb{E}_q[\\log p(x \\mid z)] - \\beta\\,\\mathrm{KL}(q(z \\mid x) \\,\\|\\, p(z)),

the warm-up objective of Bowman et al. (2016) and Sønderby et al. (2016). Observed sites are
left alone, so the reconstruction term keeps its full weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pyro.poutine.messenger import Messenger

BetaLike = float | Callable[[], float]


class KLScaleMessenger(Messenger):
    """Multiplies the log-density scale of every latent (non-observed) sample site by beta.

    Unlike :class:`pyro.poutine.scale`, beta may be zero (the start of a warm-up) and may
    be a zero-argument callable, read afresh at every site so one wrapped model follows a
    changing schedule.

    Args:
        beta: a non-negative float, or a callable returning the current value.
        guide_sites: on a guide, a set this messenger refills with the latent sites of each
            run; on a model, the set its guide fills, with which a site the model enumerates
            and the guide does not sample keeps its scale (see :func:`kl_scale_pair`).
        records: True on the guide side of such a pair.
    """

    def __init__(
        self, beta: BetaLike, guide_sites: set[str] | None = None, records: bool = False
    ) -> None:
        super().__init__()
        self.beta = beta
        self.guide_sites = guide_sites
        self.records = records

    def __enter__(self) -> KLScaleMessenger:
        if self.records and self.guide_sites is not None:
            self.guide_sites.clear()  # a new run of the guide
        return super().__enter__()

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        if self.guide_sites is not None:
            if self.records:
                self.guide_sites.add(msg["name"])
            elif msg["infer"].get("enumerate") and msg["name"] not in self.guide_sites:
                return  # summed out of the model's likelihood: no KL term
        beta = self.beta() if callable(self.beta) else self.beta
        msg["scale"] = msg["scale"] * beta


def kl_scale(fn: Callable[..., Any], beta: BetaLike) -> Callable[..., Any]:
    """Wraps a model or guide so its latent sites are scaled by ``beta``.

    Apply it to both the model and the guide: the ELBO's KL term is then scaled by beta.
    For a model that enumerates discrete sites of its own, use :func:`kl_scale_pair`.

    Args:
        fn: a Pyro model or guide.
        beta: a non-negative float, or a callable returning the current value.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> tr = pyro.poutine.trace(kl_scale(model, 0.5)).get_trace()
        >>> tr.nodes["z"]["scale"]
        0.5
    """
    return KLScaleMessenger(beta)(fn)


def kl_scale_pair(
    model: Callable[..., Any], guide: Callable[..., Any], beta: BetaLike
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The model and guide with the KL term of their ELBO scaled by ``beta``: every latent
    site the guide samples is scaled on both sides.

    A discrete site that the model enumerates and the guide does not sample is summed out
    of the likelihood, :math:`p(x \\mid z) = \\sum_k p(k)\\, p(x \\mid z, k)`: it is no KL
    term, and Pyro's ``TraceEnum_ELBO`` refuses an enumerated site whose scale differs from
    its plate's observations, so it keeps its scale. The guide runs before the model in
    every ELBO, and its wrapper tells the model's which sites it sampled; a site the guide
    enumerates (a semi-supervised label) is a KL term and scaled, whether or not the model
    marks it for enumeration too.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     k = pyro.sample("k", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        ...     pyro.sample("z", dist.Normal(k, 1.0))
        >>> def guide():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> m, g = kl_scale_pair(model, guide, 0.5)
        >>> g_tr = pyro.poutine.trace(g).get_trace()
        >>> m_tr = pyro.poutine.trace(pyro.poutine.replay(m, trace=g_tr)).get_trace()
        >>> m_tr.nodes["k"]["scale"], m_tr.nodes["z"]["scale"], g_tr.nodes["z"]["scale"]
        (1.0, 0.5, 0.5)
    """
    sites: set[str] = set()
    return (
        KLScaleMessenger(beta, guide_sites=sites)(model),
        KLScaleMessenger(beta, guide_sites=sites, records=True)(guide),
    )


class LinearAnnealing:
    """Beta rising linearly from ``start`` to ``end`` over ``warmup_steps``, then constant.

    References:
        Sønderby et al., "Ladder Variational Autoencoders", arXiv:1602.02282.

    Example:
        >>> schedule = LinearAnnealing(warmup_steps=10)
        >>> [schedule(0), schedule(5), schedule(20)]
        [0.0, 0.5, 1.0]
    """

    def __init__(self, warmup_steps: int, start: float = 0.0, end: float = 1.0) -> None:
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
        if start < 0 or end < 0:
            raise ValueError(f"beta must be non-negative, got start={start}, end={end}")
        self.warmup_steps, self.start, self.end = warmup_steps, start, end

    def __call__(self, step: int) -> float:
        frac = min(step / self.warmup_steps, 1.0)
        return self.start + (self.end - self.start) * frac


class CyclicalAnnealing:
    """Beta repeating a linear ramp: 0 to 1 over ``ratio`` of each period, then held at 1.

    References:
        Fu et al., "Cyclical Annealing Schedule: A Simple Approach to Mitigating KL
        Vanishing", arXiv:1903.10145.

    Example:
        >>> schedule = CyclicalAnnealing(period=10, ratio=0.5)
        >>> [schedule(0), schedule(2), schedule(7), schedule(10)]
        [0.0, 0.4, 1.0, 0.0]
    """

    def __init__(self, period: int, ratio: float = 0.5) -> None:
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must lie in (0, 1], got {ratio}")
        self.period, self.ratio = period, ratio

    def __call__(self, step: int) -> float:
        phase = (step % self.period) / self.period
        return min(phase / self.ratio, 1.0) if not math.isclose(self.ratio, 0) else 1.0
