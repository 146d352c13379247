"""The naive Monte Carlo estimate of :math:`\\log p(x)`: latents drawn from the prior.

.. math:: \\hat p(x) = \\frac{1}{K} \\sum_{k=1}^K p(x \\mid z_k), \\qquad z_k \\sim p(z),

is unbiased for :math:`p(x)`, but almost every prior draw explains a given image badly, so
the average is dominated by rare lucky draws: for an image model the estimate of
:math:`\\log p(x)` sits far below the truth at any affordable :math:`K`. Importance sampling
with the guide as proposal (:func:`pyro_gen.infer.iwae_log_likelihood`) is the same
estimator with :math:`q(z \\mid x)` in place of :math:`p(z)`; the gap between the two at
equal :math:`K` is why amortized inference matters. Here the prior is simply used *as the
guide* of that same estimator, so both share one implementation, its data forms and its
standard errors (``per_example=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine

from pyro_gen.infer.evaluation import iwae_log_likelihood


def prior_guide(model: Callable[..., Any]) -> Callable[..., Any]:
    """A guide that draws every latent site of ``model`` from the model itself (its prior,
    given the latents drawn before it): the model with its observed sites hidden.

    Its importance weight :math:`p(x, z) / p(z)` is the likelihood :math:`p(x \\mid z)`.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> trace = poutine.trace(prior_guide(model)).get_trace(torch.zeros(3))
        >>> [name for name, site in trace.nodes.items() if site["type"] == "sample"]
        ['data', 'z']
    """
    return poutine.block(model, hide_fn=lambda msg: bool(msg.get("is_observed")))


def naive_log_likelihood(
    model: Any,
    data: Any,
    *,
    num_samples: int = 5000,
    batch_size: int = 100,
    chunk: int = 500,
    per_example: bool = False,
    **kwargs: Any,
) -> Any:
    """The naive estimate of :math:`\\log p(x)` per example: :math:`\\log \\frac{1}{K}
    \\sum_k p(x \\mid z_k)` with :math:`z_k` drawn from the prior, in nats.

    A lower bound in expectation (Jensen), tight only as :math:`K \\to \\infty`; compare
    it with :func:`pyro_gen.infer.iwae_log_likelihood` at the same ``num_samples``.

    Args:
        model: a pyro_gen module (its guide is not used) or any Pyro model callable.
        data: the data, in any form :func:`pyro_gen.infer.iwae_log_likelihood` takes.
        num_samples: :math:`K`, prior draws per example.
        batch_size: examples per batch when ``data`` is sliced.
        chunk: prior draws made at once.
        per_example: return each example's estimate (for standard errors).
        **kwargs: further arguments of :func:`~pyro_gen.infer.iwae_log_likelihood`
            (``transform=``, ``plate_name=``, ``progress=``).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):  # z ~ N(0, 1), x | z ~ N(z, 1), so p(x) = N(0, 2)
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> x = torch.tensor([0.0, 1.0])
        >>> estimate = naive_log_likelihood(model, x, num_samples=20000, per_example=True)
        >>> exact = dist.Normal(0.0, 2**0.5).log_prob(x).double()
        >>> bool((estimate - exact).abs().max() < 0.05)
        True
    """
    # a pyro_gen module is scored through its model method, as fit and evaluation do
    is_module = isinstance(model, torch.nn.Module) and callable(getattr(model, "model", None))
    model_fn = model.model if is_module else model
    return iwae_log_likelihood(
        model,
        data,
        guide=prior_guide(model_fn),
        num_samples=num_samples,
        batch_size=batch_size,
        chunk=chunk,
        per_example=per_example,
        **kwargs,
    )


__all__ = ["naive_log_likelihood", "prior_guide"]
