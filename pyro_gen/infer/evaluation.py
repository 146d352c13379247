"""Evaluation of any model/guide pair: test ELBO and importance-weighted log-likelihood."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO
from pyro.poutine.util import prune_subsample_sites

from pyro_gen.data.batching import Batch, DeviceBatches

DATA_PLATE = "data"
_PARTICLE_PLATE = "_iwae_particles"


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a stateless module)."""
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def _batches(
    gen_model: torch.nn.Module,
    data: Batch,
    batch_size: int,
    transform: Callable[[torch.Tensor], torch.Tensor] | None,
) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
    for batch in DeviceBatches(data, batch_size, shuffle=False, device=module_device(gen_model)):
        batch = dict(batch) if isinstance(batch, Mapping) else {"x": batch}
        if transform is not None:
            batch["x"] = transform(batch["x"])
        yield batch, next(iter(batch.values())).shape[0]


@torch.no_grad()
def evaluate_elbo(
    gen_model: torch.nn.Module,
    data: Batch,
    *,
    batch_size: int = 500,
    num_particles: int = 1,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    loss: ELBO | None = None,
) -> float:
    """The ELBO per example on ``data``, in nats (higher is better).

    Args:
        gen_model: a module with ``model`` and ``guide``.
        data: a tensor of examples or a dict of tensors (see :func:`~pyro_gen.infer.fit`).
        batch_size: examples per evaluation batch.
        num_particles: Monte Carlo samples of the guide per example.
        transform: applied to each batch's ``x`` (e.g. a binarization).
        loss: the ELBO estimator; default Trace_ELBO (replaced when num_particles > 1).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> class Unit(torch.nn.Module):
        ...     def model(self, x):
        ...         with pyro.plate("data", x.shape[0]):
        ...             pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)
        ...     def guide(self, x):
        ...         pass
        >>> round(evaluate_elbo(Unit(), torch.zeros(10)), 4)  # log N(0; 0, 1)
        -0.9189
    """
    if loss is None or num_particles != 1:
        loss = Trace_ELBO(num_particles=num_particles)
    was_training = gen_model.training
    gen_model.eval()
    total, count = 0.0, 0
    try:
        for batch, n in _batches(gen_model, data, batch_size, transform):
            total -= loss.loss(gen_model.model, gen_model.guide, **batch)
            count += n
    finally:
        gen_model.train(was_training)
    return total / count


def _max_plate_nesting(gen_model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    guide_trace = poutine.trace(gen_model.guide).get_trace(**batch)
    replayed = poutine.replay(gen_model.model, trace=guide_trace)
    model_trace = poutine.trace(replayed).get_trace(**batch)
    dims = [
        -frame.dim
        for tr in (guide_trace, model_trace)
        for site in tr.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


def _site_log_weights(
    trace: poutine.Trace, particle_dim: int, num_particles: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sums the sample sites' log-densities into a per-example part of shape (K, B) and,
    for sites outside the data plate (global sites), a shared part of shape (K,)."""
    local: torch.Tensor = torch.zeros(())
    shared: torch.Tensor | None = None
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        log_prob = site["log_prob"]
        dims = {f.name: f.dim for f in site["cond_indep_stack"] if f.vectorized}
        data_dim = dims.get(DATA_PLATE)
        # Left-pad so the particle dim exists, then sum every dim but particles and data.
        log_prob = log_prob.reshape((1,) * max(0, -particle_dim - log_prob.dim()) + log_prob.shape)
        keep = {log_prob.dim() + particle_dim}
        if data_dim is not None:
            keep.add(log_prob.dim() + data_dim)
        summed = [d for d in range(log_prob.dim()) if d not in keep]
        log_prob = log_prob.sum(summed) if summed else log_prob
        if data_dim is None:
            term = log_prob.reshape(-1).expand(num_particles)
            shared = term if shared is None else shared + term
        else:
            local = local + log_prob.reshape(log_prob.shape[0], -1)
    return local.expand(num_particles, batch_size), shared


@torch.no_grad()
def _log_weights(
    gen_model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    num_particles: int,
    max_plate_nesting: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(x, z_k) - log q(z_k | x) for k < num_particles, vectorised: a per-example part
    (K, B) and, when there are global sites, a shared part (K,)."""
    particle_dim = -max_plate_nesting - 1
    batch_size = next(iter(batch.values())).shape[0]
    with pyro.plate(_PARTICLE_PLATE, num_particles, dim=particle_dim):
        guide_trace = poutine.trace(gen_model.guide).get_trace(**batch)
        replayed = poutine.replay(gen_model.model, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(**batch)
    model_trace = prune_subsample_sites(model_trace)
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    local_p, shared_p = _site_log_weights(model_trace, particle_dim, num_particles, batch_size)
    local_q, shared_q = _site_log_weights(guide_trace, particle_dim, num_particles, batch_size)
    shared = None
    if shared_p is not None or shared_q is not None:
        zero = torch.zeros(num_particles, device=local_p.device)
        shared = (zero if shared_p is None else shared_p) - (zero if shared_q is None else shared_q)
    return local_p - local_q, shared


def iwae_log_likelihood(
    gen_model: torch.nn.Module,
    data: Batch,
    *,
    num_samples: int = 5000,
    batch_size: int = 100,
    chunk: int = 500,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Importance-weighted estimate of the mean log-likelihood, in nats per example.

    Uses the guide as the proposal, which gives the IWAE bound of Burda et al.:

    .. math::

        \\log p(x) \\ge \\mathbb{E}\\Big[\\log \\frac{1}{K} \\sum_{k=1}^K
            \\frac{p(x, z_k)}{q(z_k \\mid x)}\\Big], \\quad z_k \\sim q(z \\mid x),

    tight as :math:`K \\to \\infty`. Particles are drawn ``chunk`` at a time under a
    vectorised plate, so memory stays bounded for K = 5000; the log-mean-exp is taken
    over all K at the end. Sample sites outside the ``"data"`` plate (global latents)
    make the weight joint over the batch; the estimate is then of ``log p(batch)``
    divided by the batch size, and a warning says so.

    References:
        Burda, Grosse, Salakhutdinov, "Importance Weighted Autoencoders", arXiv:1509.00519.

    Args:
        gen_model: a module with ``model`` and ``guide``; local latents under a plate named
            ``"data"``, written to broadcast over an extra leading particle dimension.
        data: a tensor of examples or a dict of tensors.
        num_samples: K, importance samples per example.
        batch_size: examples per batch.
        chunk: particles drawn at once.
        transform: applied to each batch's ``x``.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> class LinearGaussian(torch.nn.Module):  # z ~ N(0,1), x | z ~ N(z, 1)
        ...     def model(self, x):
        ...         with pyro.plate("data", x.shape[0]):
        ...             z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...             pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        ...     def guide(self, x):
        ...         with pyro.plate("data", x.shape[0]):
        ...             pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))  # exact posterior
        >>> x = torch.tensor([0.0, 1.0])
        >>> exact = dist.Normal(0.0, 2**0.5).log_prob(x).mean()
        >>> abs(iwae_log_likelihood(LinearGaussian(), x, num_samples=10) - exact.item()) < 1e-5
        True
    """
    if num_samples < 1 or chunk < 1:
        raise ValueError(f"num_samples and chunk must be >= 1, got {num_samples}, {chunk}")
    was_training = gen_model.training
    gen_model.eval()
    total, count, nesting, warned = 0.0, 0, None, False
    try:
        for batch, n in _batches(gen_model, data, batch_size, transform):
            if nesting is None:
                nesting = _max_plate_nesting(gen_model, batch)
            local, shared = [], []
            for start in range(0, num_samples, chunk):
                log_w, shared_w = _log_weights(
                    gen_model, batch, min(chunk, num_samples - start), nesting
                )
                local.append(log_w)
                shared.append(shared_w)
            log_w = torch.cat(local)  # (K, B)
            if shared[0] is not None:
                if not warned:
                    warnings.warn(
                        "the model has sample sites outside the 'data' plate; the IWAE "
                        "estimate is of log p(batch) jointly, reported per example",
                        stacklevel=2,
                    )
                    warned = True
                joint = log_w.sum(1) + torch.cat(shared)
                total += float(torch.logsumexp(joint, 0) - math.log(joint.shape[0]))
            else:
                total += float((torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])).sum())
            count += n
    finally:
        gen_model.train(was_training)
    return total / count


def bits_per_dim_from_nats(log_likelihood_nats: float, num_dims: int) -> float:
    """Converts a log-likelihood per example (nats) into bits per dimension (lower is better).

    Example:
        >>> round(bits_per_dim_from_nats(-784 * math.log(2), 784), 6)
        1.0
    """
    return -log_likelihood_nats / (num_dims * math.log(2))
