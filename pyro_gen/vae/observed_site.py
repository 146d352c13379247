"""The model's site that observes the data: what the helpers that decode through a user's
model (:func:`~pyro_gen.vae.missing.impute`, :func:`~pyro_gen.vae.decoding.reconstruct`,
:func:`~pyro_gen.vae.diagnostics.interpolate`) read :math:`p(x \\mid z)` from, so nothing
about the model's networks needs to be known."""

from __future__ import annotations

import torch
from pyro.poutine import Trace

from pyro_gen.infer.log_weights import DataPlate

__all__ = ["observed_data_site"]


def _observed_in_plate(model_trace: Trace, plate: DataPlate) -> list[str]:
    # A pyro.deterministic site is recorded as observed, but it is a function of other
    # sites, not data: Pyro's obs_mask= idiom records one (``x``, the observed entries merged
    # with the drawn ``x_unobserved``) beside the site that observes the data (``x_observed``).
    return [
        name
        for name, node in model_trace.nodes.items()
        if node["type"] == "sample"
        and node["is_observed"]
        and not node["infer"].get("_deterministic", False)
        and any(f.name == plate.name for f in node["cond_indep_stack"])
    ]


def observed_data_site(
    model_trace: Trace, plate: DataPlate, x: torch.Tensor, site: str | None, purpose: str
) -> str:
    """The name of the model's observed site of ``x`` in ``plate``: ``site`` if given, else
    the only observed site there; it must observe ``x`` itself (a reshaped view is fine).

    Raises:
        ValueError: no single observed site (``purpose`` says who needs it, the message asks
            for ``site=``), ``site`` is not one, or the site observes something else than x.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro import poutine
        >>> def model(x):
        ...     with pyro.plate("rows", x.shape[0]):
        ...         pyro.sample("pixels", dist.Bernoulli(0.5).expand([4]).to_event(1), obs=x)
        >>> x = torch.ones(2, 2, 2)
        >>> trace = poutine.trace(model).get_trace(x.reshape(2, 4))
        >>> observed_data_site(trace, DataPlate("rows", -1), x, None, "decoding")
        'pixels'
    """
    observed = _observed_in_plate(model_trace, plate)
    if site is None and len(observed) > 1:
        # a labelled batch observes its labels beside the data (an SSVAE's y): the site
        # that observes x itself is the data's, when only one does
        observes_x = [n for n in observed if _observes(model_trace.nodes[n]["value"], x)]
        if len(observes_x) == 1:
            observed = observes_x
    if site is None:
        if len(observed) != 1:
            raise ValueError(
                f"{purpose} needs the model's observed site of the data; the model observes "
                f"{observed or 'nothing'} in plate {plate.name!r}: name it with site=..."
            )
        site = observed[0]
    elif site not in observed:
        raise ValueError(
            f"site {site!r} is not an observed site of the model in plate {plate.name!r} "
            f"(observed there: {observed})"
        )
    value = model_trace.nodes[site]["value"]
    if not _observes(value, x):
        raise ValueError(
            f"the model's site {site!r} does not observe x as given (it observes a tensor of "
            f"shape {tuple(value.shape)}, x has {tuple(x.shape)}, or other values): {purpose} "
            "reads x's distribution from that site, so it must observe x itself (a reshaped "
            "view is fine)"
        )
    return site


def _observes(value: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether a site's observed ``value`` is ``x`` (a reshaped view is fine)."""
    return value.numel() == x.numel() and torch.equal(value.reshape(x.shape).to(x.dtype), x)
