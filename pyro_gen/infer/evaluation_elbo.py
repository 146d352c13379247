"""The test ELBO of any model/guide pair, per example (see :mod:`pyro_gen.infer.evaluation`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_gen.data.batching import Transform
from pyro_gen.infer.argument_kinds import check_kinds
from pyro_gen.infer.evaluation_batches import score_batches, widen
from pyro_gen.infer.evaluation_checks import check_counts
from pyro_gen.infer.program_checks import check_loss

__all__ = ["ELBO_CHUNK", "evaluate_elbo"]

#: Particles drawn at once by evaluate_elbo (IWAE takes ``chunk=``).
ELBO_CHUNK = 100


def evaluate_elbo(
    model: Any,
    data: Any,
    *,
    guide: Callable | None = None,
    batch_size: int = 500,
    num_particles: int = 1,
    transform: Transform | None = None,
    loss: Any = None,
    plate_name: str | None = None,
    per_example: bool = False,
    progress: bool = False,
) -> float | torch.Tensor:
    """The ELBO per example on ``data``, in nats (higher is better).

    With global latents :math:`g` (sites outside the data plate) and local latents
    :math:`z_i`, the data set's ELBO divided by the number of examples :math:`N`,

    .. math::

        \\frac{1}{N}\\Big(\\mathbb{E}_{q(g)}\\Big[\\log\\frac{p(g)}{q(g)}\\Big]
        + \\sum_{i=1}^N \\mathbb{E}_{q(g)\\,q(z_i \\mid x_i, g)}
        \\Big[\\log\\frac{p(x_i, z_i \\mid g)}{q(z_i \\mid x_i, g)}\\Big]\\Big),

    estimated with ``num_particles`` draws; each draw's :math:`g` is held fixed over all
    batches, so the result does not depend on ``batch_size`` and is exact for an exact
    posterior guide. Each example counts once: a subsampled data plate's scale :math:`N/B`
    is removed, while other scales (``poutine.scale``, masks, an inner subsampled plate)
    are kept. (A model that subsamples its data itself, with ``subsample_size=``, scores
    the examples it draws, one draw per batch shared by all particles; pass it minibatches
    with ``subsample=`` indices to score every example.)
    Discrete model sites marked ``infer={"enumerate": "parallel"}`` that the guide does not
    sample are summed out of each example, as ``TraceEnum_ELBO`` does (sites enumerated by
    draws from their prior, ``"num_samples": S``, are averaged over the draws, as
    ``TraceTMC_ELBO`` does); a latent the guide lacks otherwise is drawn from the model,
    with a warning. Discrete guide sites marked for parallel enumeration
    (``config_enumerate`` on the guide, as in Pyro's semi-supervised VAE) are summed out of
    each example as ``TraceEnum_ELBO`` sums them, :math:`\\sum_y q(y \\mid x)
    \\log \\frac{p(x, y, z_y)}{q(y \\mid x)\\, q(z_y \\mid x, y)}` with one draw
    :math:`z_y` per value (see :mod:`~pyro_gen.infer.evaluation_guide_enumeration`); one
    that cannot be summed per example (outside the data plate or in a plate inside it) is
    refused. ``loss`` is accepted so that
    :func:`~pyro_gen.infer.fit` can pass its objective: the estimate is always the plain
    ELBO (what a free-bits or IWAE objective bounds), the objective's ``num_particles`` is
    used when ``num_particles`` is 1, and with a ``TraceMeanField_ELBO`` the KL of each
    latent is taken in closed form where torch knows it (the same expectation, less noise;
    an autoguide's Delta sites keep their log-density, the Jacobian that Pyro's
    KL(Delta || p) drops, as NumPyro's does since pyro-ppl/numpyro#1625).

    Args:
        model: a pyro_gen module (its ``model`` and ``guide``) or any Pyro model callable.
        data: a tensor, a tuple or dict of tensors, or an iterable of batches (see
            :func:`~pyro_gen.data.batching.batch_calls`).
        guide: a Pyro guide replacing the module's guide; required for a plain callable.
        batch_size: examples per batch when ``data`` is sliced.
        num_particles: Monte Carlo draws from the guide.
        transform: applied to each batch (see :func:`~pyro_gen.data.batching.with_transform`).
        loss: the training objective (its ``num_particles`` and type are read).
        plate_name: the plate over examples; found from the trace when None.
        per_example: return each example's value (shape ``(N,)``, float64) instead of the
            mean. With global latents an example's value is its expected local term plus
            an equal :math:`1/N` share of the global term, so the values still sum to the
            data set's ELBO; their spread then reflects the local terms only.
        progress: show a progress bar over batches and particle chunks.

    Raises:
        ValueError: the data plate cannot be found (pass ``plate_name=``), a guide site is
            not in the model, a count is not a positive integer, the model observes its
            data through a Delta (an implicit model: no likelihood), or a guide site is
            enumerated where it cannot be summed out per example. Guide sites that are
            point masses (``AutoDelta``) get a warning: the estimate is then log p(x, z).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     with pyro.plate("N", x.shape[0]):
        ...         pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)
        >>> round(evaluate_elbo(model, torch.zeros(10), guide=lambda x: None), 4)
        -0.9189
    """
    if loss is not None:
        check_loss(loss)
        if num_particles == 1:
            num_particles = int(getattr(loss, "num_particles", 1))
    check_counts(num_particles=num_particles)
    check_kinds(plate_name=plate_name, per_example=per_example, progress=progress)

    def reduce(local: torch.Tensor, shared: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return widen(local).mean(0), widen(shared).mean()

    results, _ = score_batches(
        model,
        data,
        guide=guide,
        batch_size=batch_size,
        num_particles=num_particles,
        chunk=min(num_particles, ELBO_CHUNK),
        transform=transform,
        plate_name=plate_name,
        progress=progress,
        desc="evaluate_elbo",
        reduce=reduce,
        analytic_kl=isinstance(loss, TraceMeanField_ELBO),
    )
    values = torch.cat([local for local, _ in results]).cpu().double()
    # Global terms are counted once, from the first batch's draws (the later batches replay
    # the same draws), and shared equally by the examples.
    values = values + float(results[0][1]) / values.numel()
    return values if per_example else float(values.mean())
