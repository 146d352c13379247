"""Per-example statistics of one latent site of a guide, read through traces: what the
posterior diagnostics (:func:`~pyro_gen.vae.diagnostics.active_units`,
:func:`~pyro_gen.vae.diagnostics.kl_per_dim`) need of any VAE: a user's own model and guide,
an assigned autoguide, one layer of a hierarchical VAE."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.poutine import Trace
from torch.distributions import biject_to

from pyro_gen.data.random_state import rng_left_alone
from pyro_gen.infer.log_weights import find_data_plate
from pyro_gen.vae.autoguide_encoder import is_identity
from pyro_gen.vae.example_rows import check_every_example, example_rows
from pyro_gen.vae.pairs import evaluated_pair, model_and_guide
from pyro_gen.vae.posterior_point import PosteriorPoint

__all__ = ["latent_statistics"]


def local_latents(guide_trace: Trace, plate: str) -> list[str]:
    """The guide's latent sample sites in the data plate ``plate`` (auxiliary sites, nested
    plates' subsample sites and ``pyro.deterministic`` records left out).

    Example:
        >>> import pyro
        >>> from pyro import poutine
        >>> def guide():
        ...     pyro.sample("w", dist.Normal(0.0, 1.0))  # a global
        ...     with pyro.plate("data", 4), pyro.plate("items", 3, dim=-2):
        ...         pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> local_latents(poutine.trace(guide).get_trace(), "data")
        ['z']
    """
    return [
        name
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and isinstance(site["fn"], torch.distributions.Distribution)
        and not site["infer"].get("is_auxiliary", False)
        and not site["infer"].get("_deterministic", False)
        and any(f.name == plate for f in site["cond_indep_stack"])
    ]


def diagonal_normal(fn: Any) -> dist.Normal | None:
    """The Normal under ``fn``'s ``Independent`` and mask wrappers, or None for another
    family.

    Example:
        >>> diagonal_normal(dist.Normal(torch.zeros(3), 1.0).to_event(1)).loc.shape
        torch.Size([3])
    """
    while isinstance(fn, (dist.Independent, MaskedDistribution)):
        fn = fn.base_dist
    return fn if isinstance(fn, torch.distributions.Normal) else None


def guide_normal(guide_trace: Trace, site: str, support: Any) -> dist.Normal | None:
    """The guide's diagonal Normal of ``site``, or None for another family. A Pyro
    autoguide (``AutoNormal``) draws a latent as an auxiliary ``<site>_unconstrained``
    Normal and records the latent as a ``Delta``; on a real ``support`` (the model site's:
    the Delta's is always real) the latent is that draw, so its Normal is the guide's
    density (the Delta alone was refused as not Normal).

    Example:
        >>> import pyro
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     with pyro.plate("rows", 3):
        ...         pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> pyro.clear_param_store()
        >>> trace = poutine.trace(AutoNormal(model)).get_trace()
        >>> guide_normal(trace, "z", dist.constraints.real_vector).loc.shape
        torch.Size([3, 2])
    """
    node = guide_trace.nodes[site]
    aux = guide_trace.nodes.get(f"{site}_unconstrained")
    if (
        isinstance(node["fn"], dist.Delta)
        and aux is not None
        and aux["infer"].get("is_auxiliary", False)
        and is_identity(biject_to(support))
    ):
        return diagonal_normal(aux["fn"])
    return diagonal_normal(node["fn"])


def chosen_latent(guide_trace: Trace, model_trace: Trace, site: str | None, verb: str) -> str:
    """``site`` if it is a latent site of the guide in the model's data plate, else (``site``
    None) the guide's only latent there; the error asks for ``site=`` to name the one to
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
    plate = find_data_plate(model_trace).name
    latents = local_latents(guide_trace, plate)
    if site is None:
        if len(latents) != 1:
            raise ValueError(
                f"the guide has the latent sites {latents} in the data plate {plate!r}: "
                f"name the one to {verb} with site=..."
            )
        return latents[0]
    if site not in latents:
        raise ValueError(
            f"site {site!r} is not a latent site of the guide in the data plate {plate!r} "
            f"(those are {latents})"
        )
    return site


def site_mask(node: dict) -> torch.Tensor | None:
    """Where a sample site's log-density counts, broadcastable against its value: the
    ``poutine.mask`` it ran under and the masks of ``.mask(...)`` in its distribution (None
    where nothing is masked).

    Example:
        >>> import pyro
        >>> from pyro import poutine
        >>> def model():
        ...     m = torch.tensor([True, False])
        ...     pyro.sample("z", dist.Normal(torch.zeros(2, 3), 1.0).mask(m[:, None]).to_event(1))
        >>> site_mask(poutine.trace(model).get_trace().nodes["z"]).shape
        torch.Size([2, 3])
    """
    fn = node["fn"]
    depth = len(fn.event_shape)
    masks = []
    if node.get("mask") is not None:
        mask = torch.as_tensor(node["mask"])
        masks.append(mask.reshape(mask.shape + (1,) * depth))
    while isinstance(fn, (dist.Independent, MaskedDistribution)):
        if isinstance(fn, dist.Independent):
            depth -= fn.reinterpreted_batch_ndims
        else:
            mask = torch.as_tensor(fn._mask)
            masks.append(mask.reshape(mask.shape + (1,) * depth))
        fn = fn.base_dist
    if not masks:
        return None
    out = masks[0]
    for mask in masks[1:]:
        out = out & mask
    return out


@torch.no_grad()
def latent_statistics(
    vae: Any,
    x: torch.Tensor,
    *,
    guide: Callable | None = None,
    site: str | None = None,
    batch_size: int | None = None,
    num_draws: int = 64,
    **context: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For each example of ``x``, the guide's mean of the latent ``site``,
    :math:`\\mathbb{E}_{q(z \\mid x)}[z]`, and, where guide and model give the site diagonal
    Normal densities, :math:`\\mathrm{KL}(q(z_j \\mid x) \\,\\|\\, p(z_j))` per dimension
    (else None); each ``(N, D)``.

    The guide runs as ``guide(x_batch, **context)`` with every latent at its point estimate
    (:class:`~pyro_gen.vae.posterior_point.PosteriorPoint`: a site below another, a layer
    of a hierarchy or a local latent under a global one, is described at the other's
    point; a Pyro autoguide's latent at its auxiliary site's mean), and the model replays
    it, both in evaluation mode. A mean the guide's distribution does not give in closed
    form (a flow) is the average of ``num_draws`` draws, whose noise adds about
    :math:`\\mathrm{Var}_q / \\text{num\\_draws}` to a spread of means taken over ``x``;
    the caller's random state is left as it was. Rows follow the model's data plate,
    wherever it lies in ``x`` (LDA's words by documents: one row per document).

    Args:
        vae: a pyro_gen VAE, or a Pyro model callable with ``guide=``.
        x: the examples, cut into batches along its first dimension when the data plate
            runs along it.
        guide: a Pyro guide (default: the module's).
        site: the latent site (default: the guide's only latent in the data plate).
        batch_size: examples per run of the guide (default 500; arguments with one row per
            example of x, a label or a mask, are cut into the same batches).
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
    if batch_size is not None and "batch_size" in _parameters(model_and_guide(vae, guide)[0]):
        raise ValueError(
            "batch_size= is latent_statistics' own (examples per run of the guide), and the "
            "model takes a batch_size argument too, which it would not receive: fix the "
            "model's with functools.partial(model, batch_size=...) (and the guide's)"
        )
    batch_size = 500 if batch_size is None else batch_size
    if not _cuttable(context, x.shape[0]):
        batch_size = x.shape[0]  # described whole: the other arguments go with every row
    # a description draws nothing the caller would see
    with rng_left_alone(), evaluated_pair(vae, guide, x[:batch_size], context) as pair:
        return _statistics(*pair, x, site, batch_size, num_draws, context)


def _parameters(fn: Callable) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # no signature Python can read
        return set()


def _cuttable(context: dict, n: int) -> bool:
    """Whether x can be cut into batches while the other arguments go whole to each: none
    may hold one row per example (a label, a mask, a ``PackedSequence``), which cannot be
    told from a table that has as many rows by chance, so any tensor of ``n`` rows and any
    object that is not a plain value keeps x whole."""
    plain = (type(None), bool, int, float, str)
    return all(
        isinstance(v, plain) or (torch.is_tensor(v) and (v.dim() == 0 or v.shape[0] != n))
        for v in context.values()
    )


def _statistics(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    site: str | None,
    batch_size: int,
    num_draws: int,
    context: dict,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    means, kls = [], []
    start = 0
    while start < x.shape[0]:
        batch = x[start : start + batch_size]
        guide_trace = poutine.trace(PosteriorPoint(num_draws)(guide)).get_trace(batch, **context)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            batch, **context
        )
        plate = find_data_plate(model_trace)
        check_every_example(model_trace, plate, batch, "latent_statistics")
        site = chosen_latent(guide_trace, model_trace, site, "describe")
        node = guide_trace.nodes[site]
        rows = example_rows(node["value"], node, plate)
        if start == 0 and rows.shape[0] != batch.shape[0] and batch.shape[0] < x.shape[0]:
            # the examples do not run along x's first dimension (LDA's words by documents):
            # x cannot be cut into batches of examples, so it is described whole
            batch_size = x.shape[0]
            continue
        means.append(rows)
        model_fn = model_trace.nodes[site]["fn"]
        q, p = guide_normal(guide_trace, site, model_fn.support), diagonal_normal(model_fn)
        if q is not None and p is not None:
            kl = torch.distributions.kl_divergence(q, p)
            counted = site_mask(node)  # a masked site (padding) adds nothing, as to the ELBO
            kl = kl if counted is None else kl * counted.to(kl.dtype)
            kls.append(example_rows(kl, node, plate))
        start += batch.shape[0]
    return torch.cat(means), (torch.cat(kls) if len(kls) == len(means) else None)
