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
    """

    def __init__(self, beta: BetaLike) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            beta = self.beta() if callable(self.beta) else self.beta
            msg["scale"] = msg["scale"] * beta


def kl_scale(fn: Callable[..., Any], beta: BetaLike) -> Callable[..., Any]:
    """Wraps a model or guide so its latent sites are scaled by ``beta``.

    Apply it to both the model and the guide: the ELBO's KL term is then scaled by beta.

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
