"""The guide's point estimate of every latent: what the helpers that decode through a model
(:func:`~pyro_gen.vae.decoding.reconstruct`, :func:`~pyro_gen.vae.diagnostics.interpolate`)
and describe a guide's latents (:func:`~pyro_gen.vae.latent_statistics.latent_statistics`)
read, so that their results do not depend on a draw."""

from __future__ import annotations

from typing import Any

import torch
from pyro.poutine.messenger import Messenger

__all__ = ["PosteriorPoint"]


def _point(fn: Any, num_draws: int) -> torch.Tensor:
    """A point estimate under ``fn``: its mean, the average of ``num_draws`` draws where
    the mean has no closed form (a flow), or for a discrete site its mode (else a draw:
    an average of labels is no label)."""
    discrete = getattr(fn.support, "is_discrete", False)
    try:
        value = fn.mode if discrete else fn.mean
    except NotImplementedError:
        value = None
    if value is not None and bool(torch.isfinite(value).all()):
        return value.expand(fn.batch_shape + fn.event_shape)
    return fn.sample() if discrete else fn.sample((num_draws,)).mean(0)


class PosteriorPoint(Messenger):
    """Gives every latent sample site of a guide its point estimate instead of a draw: the
    distribution's mean, the average of ``num_draws`` draws where the mean has no closed
    form (a flow), the mode of a discrete site. Sites later in the guide are computed
    from the earlier sites' points (the lower layer of a hierarchy at the upper layer's).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro import poutine
        >>> def guide():
        ...     z = pyro.sample("z", dist.Normal(2.0, 1.0))
        ...     pyro.sample("w", dist.Normal(z, 1.0))
        >>> trace = poutine.trace(PosteriorPoint()(guide)).get_trace()
        >>> float(trace.nodes["z"]["value"]), float(trace.nodes["w"]["value"])
        (2.0, 2.0)
    """

    def __init__(self, num_draws: int = 64) -> None:
        super().__init__()
        self.num_draws = num_draws

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None:
            return
        if not isinstance(msg["fn"], torch.distributions.Distribution):
            return  # a plate's subsample site
        msg["value"] = _point(msg["fn"], self.num_draws)
