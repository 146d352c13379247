"""Per-example statistics of one latent site of a guide, read through traces: what the
posterior diagnostics (:func:`~pyro_gen.vae.diagnostics.active_units`,
:func:`~pyro_gen.vae.diagnostics.kl_per_dim`) need of any VAE: a user's own model and guide,
an assigned autoguide, one layer of a hierarchical VAE."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine import Trace

from pyro_gen.infer.log_weights import find_data_plate
from pyro_gen.vae.pairs import evaluated_pair

__all__ = ["latent_statistics"]


def local_latents(guide_trace: Trace, plate: str) -> list[str]:
    """The guide's latent sample sites in the data plate ``plate`` (auxiliary sites left out)."""
    return [
        name
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site["infer"].get("is_auxiliary", False)
        and any(f.name == plate for f in site["cond_indep_stack"])
    ]


def diagonal_normal(fn: Any) -> dist.Normal | None:
    """The Normal under ``fn``'s ``Independent`` wrappers, or None for another family.

    Example:
        >>> diagonal_normal(dist.Normal(torch.zeros(3), 1.0).to_event(1)).loc.shape
        torch.Size([3])
    """
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, torch.distributions.Normal) else None


def chosen_latent(guide_trace: Trace, model_trace: Trace, site: str | None, verb: str) -> str:
    """``site`` if it is a latent site of the guide, else (``site`` None) the guide's only
    latent in the model's data plate; the error asks for ``site=`` to name the one to
    ``verb``.

    Example:
        >>> import pyro
        >>> def model(x):
        ...     with pyro.plate("rows", 2):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> trace = poutine.trace(model).get_trace(torch.zeros(2))  # the prior as guide
        >>> chosen_latent(trace, trace, None, "describe")
        'z'
    """
    if site is None:
        plate = find_data_plate(model_trace).name
        latents = local_latents(guide_trace, plate)
        if len(latents) != 1:
            raise ValueError(
                f"the guide has the latent sites {latents} in the data plate {plate!r}: "
                f"name the one to {verb} with site=..."
            )
        return latents[0]
    if site not in guide_trace.nodes or guide_trace.nodes[site]["is_observed"]:
        raise ValueError(f"site {site!r} is not a latent site of the guide")
    return site


@torch.no_grad()
def latent_statistics(
    vae: Any,
    x: torch.Tensor,
    *,
    guide: Callable | None = None,
    site: str | None = None,
    batch_size: int = 500,
    num_draws: int = 64,
    **context: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For each example of ``x``, the guide's mean of the latent ``site``,
    :math:`\\mathbb{E}_{q(z \\mid x)}[z]`, and, where guide and model give the site diagonal
    Normal densities, :math:`\\mathrm{KL}(q(z_j \\mid x) \\,\\|\\, p(z_j))` per dimension
    (else None); each ``(N, D)``.

    The guide runs as ``guide(x_batch, **context)`` and the model replays it, both in
    evaluation mode; a mean the
    guide's distribution does not give in closed form (a flow) is the average of
    ``num_draws`` draws, whose noise adds about :math:`\\mathrm{Var}_q / \\text{num\\_draws}`
    to a spread of means taken over ``x``.

    Args:
        vae: a pyro_gen VAE, or a Pyro model callable with ``guide=``.
        x: the examples, batched along the model's data plate.
        guide: a Pyro guide (default: the module's).
        site: the latent site (default: the guide's only latent in the data plate).
        batch_size: examples per run of the guide.
        num_draws: draws for a mean without a closed form.
        **context: further arguments of model and guide.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x):
        ...     with pyro.plate("rows", x.shape[0]):
        ...         z = pyro.sample("code", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        ...         pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)
        >>> def guide(x):
        ...     with pyro.plate("rows", x.shape[0]):
        ...         pyro.sample("code", dist.Normal(x / 2, 0.5**0.5).to_event(1))
        >>> mean, kl = latent_statistics(model, torch.ones(3, 2), guide=guide)
        >>> mean[0].tolist(), round(float(kl[0, 0]), 4)  # KL(N(1/2, 1/2) || N(0, 1))
        ([0.5, 0.5], 0.2216)
    """
    means, kls = [], []
    with evaluated_pair(vae, guide, x[:batch_size], context) as (model, guide):
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size]
            guide_trace = poutine.trace(guide).get_trace(batch, **context)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                batch, **context
            )
            site = chosen_latent(guide_trace, model_trace, site, "describe")
            q, p = guide_trace.nodes[site]["fn"], model_trace.nodes[site]["fn"]
            rows = batch.shape[0]
            try:
                mean = q.mean
            except NotImplementedError:  # a flow: no closed form
                mean = q.sample((num_draws,)).mean(0)
            means.append(mean.reshape(rows, -1))
            q_normal, p_normal = diagonal_normal(q), diagonal_normal(p)
            if q_normal is not None and p_normal is not None:
                kl = torch.distributions.kl_divergence(q_normal, p_normal)
                kls.append(kl.expand(mean.shape).reshape(rows, -1))
    kl_all = torch.cat(kls) if len(kls) == len(means) else None
    return torch.cat(means), kl_all
