"""Evaluation of any model/guide pair: test ELBO and importance-weighted log-likelihood.

Both estimators score each example under the model's data plate, found from the trace (see
:func:`~pyro_gen.infer.log_weights.find_data_plate`), so they work for any Pyro model, give
per-example values (``per_example=True``) for standard errors, and do not depend on the
batch size. Sites outside the data plate (global latents such as the weights of a Bayesian
layer or a shared mean) are counted once for the whole data set, not once per batch: each
particle's global latents are drawn once and held fixed on every batch, so the estimate of
particle :math:`k` is that of one joint draw :math:`(g_k, z_{1k}, \\dots, z_{Nk})` from
the guide.

The estimators are :func:`~pyro_gen.infer.evaluation_elbo.evaluate_elbo` and
:func:`~pyro_gen.infer.evaluation_iwae.iwae_log_likelihood`, both running the batch loop of
:mod:`~pyro_gen.infer.evaluation_batches` over the particles of
:mod:`~pyro_gen.infer.evaluation_scorer`; this module is where they are imported from.
"""

from __future__ import annotations

import torch

from pyro_gen.data.preprocessing import bits_per_dim
from pyro_gen.infer.evaluation_elbo import ELBO_CHUNK, evaluate_elbo
from pyro_gen.infer.evaluation_iwae import iwae_log_likelihood
from pyro_gen.infer.module_devices import module_device
from pyro_gen.infer.pair_declarations import declared_plate

__all__ = [
    "ELBO_CHUNK",
    "bits_per_dim_from_nats",
    "declared_plate",
    "evaluate_elbo",
    "iwae_log_likelihood",
    "module_device",
]


def bits_per_dim_from_nats(
    log_likelihood_nats: float | torch.Tensor,
    num_dims: int | tuple[int, ...],
    *,
    num_bins: int | None = None,
) -> float | torch.Tensor:
    """Converts a log-likelihood per example (nats), e.g. of :func:`iwae_log_likelihood`,
    into bits per dimension (lower is better): :func:`pyro_gen.data.bits_per_dim` of its
    negation, which checks ``num_dims``.

    Args:
        log_likelihood_nats: log-likelihood per example in nats (float or tensor).
        num_dims: dimensions per example, or an event shape such as ``x.shape[1:]``.
        num_bins: levels of the data before they were rescaled to [0, 1] (256 for
            dequantized 8-bit pixels), to report bits on the integer scale.

    Example:
        >>> import math
        >>> round(bits_per_dim_from_nats(-784 * math.log(2), 784), 6)
        1.0
        >>> round(bits_per_dim_from_nats(0.0, (1, 28, 28), num_bins=256), 6)
        8.0
    """
    return bits_per_dim(-log_likelihood_nats, num_dims, num_bins=num_bins)
