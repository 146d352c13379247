r"""Decoding through any Pyro model and guide: reconstructions and latent interpolations of a
user's own VAE (an inline prior, ``pyro.module`` networks, any guide), a hierarchical one,
or a pyro_gen VAE with a swapped guide.

Both read the decoder as the model's own :math:`p(x \mid z)`: the guide's point estimate
of each latent (:class:`PosteriorPoint`) is replayed through the model, and the answer is the
mean of the distribution at the model's observed site of the data, so nothing about the
model's networks needs to be known. This is what the Pyro VAE tutorial's
``reconstruct_img`` computes by hand, at the posterior mean instead of a draw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.trace_struct import Trace

from pyro_gen.data.random_state import rng_left_alone
from pyro_gen.infer.evaluation_scorer import one_line_message
from pyro_gen.infer.log_weights import DataPlate, find_data_plate
from pyro_gen.vae.example_rows import plate_dim
from pyro_gen.vae.latent_statistics import local_latents
from pyro_gen.vae.observed_site import observed_data_site
from pyro_gen.vae.pairs import evaluated_pair
from pyro_gen.vae.posterior_point import PosteriorPoint

__all__ = ["interpolation", "reconstruct"]


def _replayed(model: Callable, latents: Trace, x: torch.Tensor, context: dict) -> Trace:
    """The model's trace on ``x`` with its latents replayed from ``latents``."""
    return poutine.trace(poutine.replay(model, trace=latents)).get_trace(x, **context)


def _decoded_mean(
    trace: Trace,
    latents: Trace,
    x: torch.Tensor,
    *,
    site: str | None,
    purpose: str,
    drawn: Sequence[str] = (),
) -> torch.Tensor:
    """The mean of :math:`p(x \\mid z)` in the model's ``trace`` (see :func:`_replayed`),
    shaped as ``x``, read at its observed site of ``x`` (``site``, or the only one in the
    data plate).

    Raises:
        ValueError: no single observed site of x; a distribution without a finite mean; a
            model latent that ``latents`` lacks (left to enumeration, or drawn from the
            model), unless named in ``drawn``: the mean would be at a random draw of it.
    """
    name = observed_data_site(trace, find_data_plate(trace), x, site, purpose)
    node = trace.nodes[name]
    try:
        mean = node["fn"].mean
    except NotImplementedError:
        mean = None
    if mean is None or not bool(torch.isfinite(mean).all()):
        raise ValueError(
            f"{purpose} decodes x as the mean of the model's site {name!r}, whose "
            f"{type(node['fn']).__name__} distribution has no finite mean (a categorical "
            "over levels has none): observe x with a distribution that has one (Bernoulli, "
            "ContinuousBernoulli, Normal, ...)"
        )
    random = [
        name
        for name, node in trace.nodes.items()
        if node["type"] == "sample"
        and not node["is_observed"]
        and isinstance(node["fn"], torch.distributions.Distribution)
        and name not in latents.nodes
        and name not in drawn
    ]
    if random:
        raise ValueError(
            f"the model's latent sites {random} have no site in the guide (left to "
            f"enumeration, or drawn from the model), so {purpose} would decode at a random "
            "draw of them: pass their values to model and guide as arguments (a label: "
            "ys=...), or use a guide that samples them"
        )
    return mean.expand(node["value"].shape).reshape(x.shape)


@torch.no_grad()
def reconstruct(
    vae: Any,
    x: torch.Tensor,
    *,
    guide: Callable | None = None,
    site: str | None = None,
    num_draws: int = 64,
    **context: Any,
) -> torch.Tensor:
    """The model's mean of :math:`x` at the guide's point estimate of the latents given
    ``x``, shaped as ``x``: every latent at its posterior mean (see :class:`PosteriorPoint`),
    then :math:`\\mathbb{E}_{p(x \\mid z)}[x]` read from the model's observed site of the
    data. Model and guide run in evaluation mode, and the caller's random state is left as
    it was.

    Args:
        vae: a pyro_gen VAE, or a Pyro model callable ``model(x, **context)`` with ``guide=``.
        x: the batch.
        guide: a Pyro guide (default: the module's).
        site: the model's observed site of ``x`` (default: the only one in the data plate).
        num_draws: draws for a latent whose mean has no closed form.
        **context: further arguments of model and guide.

    Raises:
        ValueError: no single observed site of ``x`` (name it with ``site=``), or its
            distribution has no finite mean.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         loc = 2 * z.unsqueeze(-1).expand(-1, 2)
        ...         pyro.sample("x", dist.Normal(loc, 0.1).to_event(1), obs=x)
        >>> def guide(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(x.mean(-1) / 2, 0.05))
        >>> reconstruct(model, torch.tensor([[1.0, 3.0]]), guide=guide)
        tensor([[2., 2.]])
    """
    # a flow's mean is drawn: the caller sees no draw
    with rng_left_alone(), evaluated_pair(vae, guide, x, context) as (model, guide):
        latents = poutine.trace(PosteriorPoint(num_draws)(guide)).get_trace(x, **context)
        trace = _replayed(model, latents, x, context)
        return _decoded_mean(trace, latents, x, site=site, purpose="reconstruct")


def _along_plate(node: dict, plate: DataPlate, t: torch.Tensor) -> torch.Tensor:
    """The straight line from the site's value at the plate's first element to its second,
    at ``t``, along the plate's dimension of the value."""
    dim = plate_dim(node, plate)
    value = node["value"]
    a, b = value.narrow(dim, 0, 1), value.narrow(dim, 1, 1)
    shape = [1] * value.dim()
    shape[dim] = t.numel()
    t = t.to(device=value.device, dtype=value.dtype).reshape(shape)
    return a + t * (b - a)


@torch.no_grad()
def interpolation(
    vae: Any,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    steps: int,
    *,
    guide: Callable | None,
    latent: str | None,
    site: str | None,
    num_draws: int,
    context: dict[str, Any],
) -> torch.Tensor:
    """The model's means of :math:`x`, shape ``(steps, *x_a.shape)``, along the straight
    line between the guide's point estimates (:class:`PosteriorPoint`) for ``x_a`` and
    ``x_b``: of every latent in the data plate, or of ``latent`` only (the model then draws
    the others given it). Global latents stay at their point estimate. See
    :func:`~pyro_gen.vae.diagnostics.interpolate`.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         loc = z.unsqueeze(-1).expand(-1, 2)
        ...         pyro.sample("x", dist.Normal(loc, 0.1).to_event(1), obs=x)
        >>> def guide(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(x.mean(-1), 0.1))
        >>> interpolation(model, torch.zeros(2), torch.ones(2), 3, guide=guide, latent=None,
        ...               site=None, num_draws=1, context={})[:, 0]
        tensor([0.0000, 0.5000, 1.0000])
    """
    x = torch.stack([x_a, x_b])
    rows = [k for k, v in context.items() if torch.is_tensor(v) and v.dim() and v.shape[0] == 2]
    with ExitStack() as evaluating:
        try:
            model, guide = evaluating.enter_context(evaluated_pair(vae, guide, x, context))
            points = poutine.trace(PosteriorPoint(num_draws)(guide)).get_trace(x, **context)
            plate = find_data_plate(_replayed(model, points, x, context))
        except (RuntimeError, ValueError, IndexError) as error:
            raise ValueError(
                "interpolate encodes x_a and x_b as a batch of 2 examples with the guide; "
                f"model and guide failed on it: {one_line_message(error)}. A guide with "
                "parameters for each training example (Pyro's AutoNormal or AutoDelta over "
                "local latents) cannot encode other examples: interpolate with an amortized "
                "guide. Arguments with one row per example need the two examples' rows"
            ) from error
        local = local_latents(points, plate.name)
        if latent is not None and latent not in local:
            raise ValueError(
                f"latent={latent!r} is not a latent site of the guide in the data plate "
                f"{plate.name!r} (those are {local})"
            )
        chosen = local if latent is None else [latent]
        if not chosen:
            raise ValueError(
                f"the guide has no latent site in the data plate {plate.name!r}: nothing "
                "to interpolate"
            )
        line = Trace()
        t = torch.linspace(0, 1, steps)
        for name, node in points.nodes.items():
            if node["type"] != "sample" or not isinstance(
                node["fn"], torch.distributions.Distribution
            ):
                continue  # the plates' subsample sites: they are sized by the new batch
            if name in local and name not in chosen:
                continue  # the model draws a local latent that is not interpolated
            node = dict(node)
            if name in chosen:
                if getattr(node["fn"].support, "is_discrete", False):
                    raise ValueError(
                        f"the guide's site {name!r} is discrete and cannot be interpolated: "
                        "pass its value to model and guide (a label as an argument) or "
                        "choose the continuous latent with latent=..."
                    )
                node["value"] = _along_plate(node, plate, t)
            line.add_node(name, **node)
        x_line = x_a.expand(steps, *x_a.shape)
        try:
            trace = _replayed(model, line, x_line, context)
        except (RuntimeError, ValueError, IndexError) as error:
            raise ValueError(
                f"interpolate decodes the line's {steps} points as a batch of {steps} "
                f"examples, and the model failed on it: {one_line_message(error)}. "
                + (
                    f"The arguments {rows} have one row per example and do not fit the "
                    "line's points: pass values that broadcast over them (one example's "
                    "row, e.g. mask[0])"
                    if rows
                    else "Its other arguments must broadcast over the line's points"
                )
            ) from error
        drawn = [name for name in local if name not in chosen]
        return _decoded_mean(trace, line, x_line, site=site, purpose="interpolate", drawn=drawn)
