"""The importance-weighted (IWAE) log-likelihood of any model/guide pair, per example (see
:mod:`pyro_gen.infer.evaluation`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from pyro_gen.data.batching import Transform
from pyro_gen.infer.argument_kinds import check_kinds
from pyro_gen.infer.evaluation_batches import score_batches, widen
from pyro_gen.infer.evaluation_checks import check_counts
from pyro_gen.infer.pair_declarations import check_joint_is_density

__all__ = ["iwae_log_likelihood"]


def iwae_log_likelihood(
    model: Any,
    data: Any,
    *,
    guide: Callable | None = None,
    num_samples: int = 5000,
    batch_size: int = 100,
    chunk: int = 500,
    transform: Transform | None = None,
    plate_name: str | None = None,
    per_example: bool = False,
    progress: bool = False,
    local_samples: int = 1,
) -> float | torch.Tensor:
    """Importance-weighted estimate of the log-likelihood per example, in nats.

    The guide is the proposal. Without global latents each example gets the IWAE bound of
    Burda et al. with :math:`K` = ``num_samples`` draws,

    .. math::

        \\log p(x_i) \\ge \\mathbb{E}\\Big[\\log \\frac{1}{K} \\sum_{k=1}^K
            \\frac{p(x_i, z_{ik})}{q(z_{ik} \\mid x_i)}\\Big], \\quad z_{ik} \\sim q,

    tight as :math:`K \\to \\infty`. With global latents :math:`g` (sites outside the data
    plate) the examples are not independent, and the estimate is of :math:`\\log p(X) / N`
    for the whole data set: :math:`K` global draws :math:`g_k \\sim q(g)` are made once and
    held fixed on every batch, each example gets :math:`M` = ``local_samples`` local draws
    :math:`z_{ikm}` per :math:`g_k`, averaged into
    :math:`\\hat w_i(g_k) = \\frac{1}{M} \\sum_m
    \\frac{p(x_i, z_{ikm} \\mid g_k)}{q(z_{ikm} \\mid x_i, g_k)}`, and

    .. math::

        \\frac{1}{N} \\log \\frac{1}{K} \\sum_{k=1}^K \\exp\\Big(
            \\log\\frac{p(g_k)}{q(g_k)} + \\sum_{i=1}^N \\log \\hat w_i(g_k)\\Big),

    a lower bound in expectation (the inner average is unbiased for :math:`p(X \\mid g_k)`)
    that does not depend on the batch size. It is tight as :math:`K \\to \\infty`, but for
    a large data set the sum over examples makes the weights uneven, and with :math:`M = 1`
    it approaches :math:`\\log p(X)/N` slowly unless the local guide is good; a larger
    :math:`M` tightens the local part at :math:`M` times the cost. Without global latents
    the :math:`K M` draws are simply each example's importance samples.
    Particles are drawn ``chunk`` at a time under a vectorized plate (one at a time, with a
    warning, when the model does not broadcast over it), so memory stays bounded. Data
    plate and enumerated model sites are handled as in :func:`~pyro_gen.infer.evaluate_elbo`;
    masks are kept, but a scaled site is refused, since exp of a scaled log-weight is no
    importance weight.

    Discrete guide sites :math:`y` marked for parallel enumeration (``config_enumerate`` on
    the guide) are summed inside each importance weight: with :math:`z_{ky} \\sim
    q(z \\mid x_i, y)` drawn for every value :math:`y`,

    .. math::

        W_k = \\sum_y q(y \\mid x_i)\\, \\frac{p(x_i, y, z_{ky})}{q(y \\mid x_i)\\,
            q(z_{ky} \\mid x_i, y)} = \\sum_y \\frac{p(x_i, y, z_{ky})}{q(z_{ky} \\mid x_i, y)},
        \\qquad \\mathbb{E}[W_k] = \\sum_y \\int p(x_i, y, z)\\, dz = p(x_i),

    so :math:`\\log \\frac{1}{K} \\sum_k W_k` is a lower bound in expectation (Jensen),
    tight as :math:`K \\to \\infty`, and exact when :math:`q(z \\mid x, y)` is the
    posterior or there is no continuous latent (see
    :mod:`~pyro_gen.infer.evaluation_guide_enumeration`).

    References:
        Burda, Grosse, Salakhutdinov, "Importance Weighted Autoencoders", arXiv:1509.00519.

    Args:
        model: a pyro_gen module or any Pyro model callable.
        data: a tensor, a tuple or dict of tensors, or an iterable of batches.
        guide: a Pyro guide replacing the module's guide; required for a plain callable.
        num_samples: :math:`K`, importance samples (per example, or per global draw).
        batch_size: examples per batch when ``data`` is sliced.
        chunk: particles drawn at once.
        transform: applied to each batch.
        plate_name: the plate over examples; found from the trace when None.
        per_example: return each example's value (shape ``(N,)``, float64) instead of the
            mean. With global latents an example's value is its mean local log-weight over
            the global draws plus an equal :math:`1/N` share of the rest of the estimate, so
            the values sum to the estimate of :math:`\\log p(X)`.
        progress: show a progress bar over batches and particle chunks.
        local_samples: :math:`M`, local draws per global draw (see above).

    Raises:
        ValueError: the data plate cannot be found (pass ``plate_name=``), a guide site is
            not in the model, a count is not a positive integer, or a guide site is
            enumerated where it cannot be summed out per example; or the joint is no
            density: a guide site is a point mass (``AutoDelta``), the data are observed
            through a Delta (an implicit model), a site has a scale other than 1
            (``poutine.scale``, a subsampled plate besides the data plate's N/B), or the
            module says ``joint_is_density = False``
            (a training objective estimating a bound, such as a time-plate DDPM).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):  # z ~ N(0, 1), x | z ~ N(z, 1)
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):  # the exact posterior
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
        >>> x = torch.tensor([0.0, 1.0])
        >>> exact = dist.Normal(0.0, 2**0.5).log_prob(x)
        >>> iwae = iwae_log_likelihood(model, x, guide=guide, num_samples=10, per_example=True)
        >>> torch.allclose(iwae, exact.double(), atol=1e-5)
        True
    """
    check_counts(num_samples=num_samples, chunk=chunk, local_samples=local_samples)
    check_kinds(plate_name=plate_name, per_example=per_example, progress=progress)
    check_joint_is_density(model)

    def reduce(local: torch.Tensor, shared: torch.Tensor) -> tuple[torch.Tensor, ...]:
        local = widen(local)
        return (
            torch.logsumexp(local, 0) - math.log(num_samples),  # per example, no globals
            local.mean(0),  # mean local log-weight, with globals
            local.sum(1),  # each global draw's local sum
            widen(shared),
        )

    results, has_shared = score_batches(
        model,
        data,
        guide=guide,
        batch_size=batch_size,
        num_particles=num_samples,
        chunk=min(chunk, num_samples),
        transform=transform,
        plate_name=plate_name,
        progress=progress,
        desc="iwae_log_likelihood",
        reduce=reduce,
        local_samples=local_samples,
        importance=True,
    )
    if not has_shared:
        values = torch.cat([r[0] for r in results]).cpu().double()
        return values if per_example else float(values.mean())
    joint = results[0][3] + sum(r[2] for r in results)  # (K,): log-weights of p(X, g, Z)
    total = float(torch.logsumexp(joint, 0)) - math.log(num_samples)
    values = torch.cat([r[1] for r in results]).cpu().double()
    values = values + (total - float(values.sum())) / values.numel()
    return values if per_example else total / values.numel()
