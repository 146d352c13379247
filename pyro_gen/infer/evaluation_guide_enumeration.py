"""Discrete guide sites enumerated in parallel (``config_enumerate`` on the guide, as in Pyro's
semi-supervised VAE trained with ``TraceEnum_ELBO``), summed out of each example's weight.

Let :math:`y` be the guide's enumerated sites of one example (their joint values along the
enumeration dims), :math:`z_y \\sim q(z \\mid x, y)` the other latents, drawn once for each
value of :math:`y`, and

.. math::

    \\log w(y) = \\log p(x, y, z_y) - \\log q(y \\mid x) - \\log q(z_y \\mid x, y)

the example's log-weight at :math:`y` (model-enumerated sites already summed out of
:math:`p`). With :math:`d(y) = q(y \\mid x)` (for a site drawn ``num_samples`` = :math:`S`
times rather than enumerated over its support, :math:`d = 1/S` per draw, the draws being
from :math:`q`):

- the ELBO term is :math:`\\sum_y d(y) \\log w(y)`, whose expectation over the :math:`z_y`
  is :math:`\\mathbb{E}_{q(y, z \\mid x)}[\\log w]`, what ``TraceEnum_ELBO``'s Dice estimator
  computes (the same value, drawn the same way), with less variance than drawing :math:`y`;
- the importance weight is :math:`W = \\sum_y d(y)\\, w(y) = \\sum_y
  p(x, y, z_y) / q(z_y \\mid x, y)` (with exhaustive enumeration :math:`q(y \\mid x)`
  cancels), and since the :math:`z_y` are drawn independently for each :math:`y`,
  :math:`\\mathbb{E}[W] = \\sum_y p(x, y) = p(x)`: :math:`W` is an unbiased estimate of the
  likelihood, so :math:`\\log \\frac{1}{K} \\sum_k W_k` is an IWAE bound, tight as
  :math:`K \\to \\infty`, and exact when no continuous latent depends on :math:`y`.

A value with :math:`d(y) = 0` adds nothing (its :math:`-\\log q(y)` is infinite). As in
Pyro's Dice, :math:`d` is the guide's density without mask or scale.

The sum runs over the joint values of all enumerated sites of an example, which is their
expectation only when each lies in the data plate alone, so a site in another plate (one
inside the data plate, or outside it, coupling the examples), or sharing its enumeration
dim with another (``pyro.markov``), is refused, as is sequential enumeration.
"""

from __future__ import annotations

import math

import torch
from pyro.poutine import Trace

from pyro_gen.infer.evaluation_plate import DataPlate, plates_of, sample_sites

__all__ = [
    "GuideEnumerationError",
    "enumeration_log_weight",
    "guide_enumerated_sites",
    "marked_for_enumeration",
    "sum_out_guide_enumeration",
]


class GuideEnumerationError(ValueError):
    """The guide's enumerated sites cannot be summed out example by example."""


def marked_for_enumeration(guide_trace: Trace) -> bool:
    """Whether a latent of the guide is marked ``infer={"enumerate": "parallel"}``, so that
    the guide must run under ``poutine.enum`` to sum it out."""
    return any(
        not site["is_observed"] and site["infer"].get("enumerate") == "parallel"
        for _, site in sample_sites(guide_trace)
    )


def guide_enumerated_sites(guide_trace: Trace, plate: DataPlate, particle_dim: int) -> list[str]:
    """The guide sites that ``poutine.enum`` enumerated, checked to be summable per example.

    Raises:
        GuideEnumerationError: naming the site, when it is marked for sequential
            enumeration, lies in a plate other than the data plate alone or has a batch dim
            no plate declares, shares its enumeration dim with another site, or is drawn
            ``num_samples`` times while depending on another enumerated site.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def guide():
        ...     with pyro.plate("data", 3), pyro.plate("pixels", 2, dim=-2):
        ...         pyro.sample("y", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        >>> trace = pyro.poutine.trace(pyro.poutine.enum(guide, -3)).get_trace()
        >>> guide_enumerated_sites(trace, DataPlate("data", -1), particle_dim=-3)
        Traceback (most recent call last):
        ...
        pyro_gen.infer.evaluation_guide_enumeration.GuideEnumerationError: guide site 'y' ...
    """
    names, dims = [], {}
    for name, site in sample_sites(guide_trace):
        if site["is_observed"]:
            continue
        if site["infer"].get("enumerate") == "sequential":
            raise GuideEnumerationError(
                f"guide site {name!r} is marked for sequential enumeration, which evaluation "
                "cannot sum out (it would draw the site instead): mark it "
                "infer={'enumerate': 'parallel'} (config_enumerate(default='parallel'))"
            )
        dim = site["infer"].get("_enumerate_dim")
        if dim is None:
            continue
        plates = sorted(plates_of(site))
        log_prob = site["fn"].log_prob(site["value"])
        extra = [
            d
            for d in range(particle_dim + 1, 0)
            if d != plate.dim and -d <= log_prob.dim() and log_prob.shape[d] > 1
        ]
        if plates != [plate.name] or extra:
            where = f"plates {plates}" if plates != [plate.name] else f"batch dims {extra}"
            raise GuideEnumerationError(
                f"guide site {name!r} is enumerated in {where}, but evaluation sums a guide's "
                f"enumerated sites out of each example only in the data plate {plate.name!r} "
                "alone (one value per example). Enumerate it in the model instead (leave it "
                "out of the guide, mark the model's site infer={'enumerate': 'parallel'}), or "
                "let the guide draw it (no 'enumerate' mark)"
            )
        if dim in dims:
            raise GuideEnumerationError(
                f"guide sites {dims[dim]!r} and {name!r} share the enumeration dim {dim} "
                "(pyro.markov), so their joint values are not all summed: enumerate a chain "
                "in the model, or let the guide draw it"
            )
        others = [
            d for d in range(-log_prob.dim(), particle_dim) if d != dim and log_prob.shape[d] > 1
        ]
        if site["infer"].get("num_samples") is not None and others:
            raise GuideEnumerationError(
                f"guide site {name!r} is drawn num_samples times given another enumerated "
                "guide site, whose draws evaluation cannot weight: enumerate it over its "
                "support (no num_samples), or let the guide draw it"
            )
        dims[dim] = name
        names.append(name)
    return names


def enumeration_log_weight(site: dict) -> torch.Tensor:
    """:math:`\\log d` of one enumerated guide site at its values: its log-density without
    mask or scale, or :math:`-\\log S` for each of ``num_samples`` = :math:`S` draws."""
    log_prob = site["fn"].log_prob(site["value"])
    num_samples = site["infer"].get("num_samples")
    if num_samples is not None:  # draws from q: each weighs 1/S
        return torch.full_like(log_prob, -math.log(num_samples))
    return log_prob


def sum_out_guide_enumeration(
    local: torch.Tensor, log_d: torch.Tensor, particle_dim: int, importance: bool
) -> torch.Tensor:
    """Each example's log-weight with the guide's enumerated sites summed out:
    :math:`\\sum_y d(y) \\log w(y)` for an ELBO, :math:`\\log \\sum_y d(y) w(y)` for
    ``importance`` weights (see the module's docstring).

    Args:
        local: :math:`\\log w(y)`, with the enumeration dims left of ``particle_dim``.
        log_d: :math:`\\log d(y)`, the sum of :func:`enumeration_log_weight` over the
            enumerated sites, shaped as ``local``'s (or broadcasting to it).
        particle_dim: the particle plate's dim.
        importance: combine as importance weights instead of an expectation.

    Returns:
        ``local`` without its enumeration dims.

    Example:
        >>> log_w = torch.tensor([[[-1.0]], [[-3.0]]])  # two values of y, K = B = 1
        >>> log_d = torch.tensor([0.75, 0.25]).log().reshape(2, 1, 1)
        >>> sum_out_guide_enumeration(log_w, log_d, -2, importance=False)
        tensor([[-1.5000]])
        >>> sum_out_guide_enumeration(log_w, log_d, -2, importance=True)  # log E[w]
        tensor([[-1.2436]])
    """
    ndim = max(local.dim(), log_d.dim(), -particle_dim)
    local = local.reshape((1,) * (ndim - local.dim()) + local.shape)
    log_d = log_d.reshape((1,) * (ndim - log_d.dim()) + log_d.shape).to(local)
    local, log_d = torch.broadcast_tensors(local, log_d)
    kept = local.shape[ndim + particle_dim :]
    local, log_d = local.reshape(-1, *kept), log_d.reshape(-1, *kept)
    possible = log_d > -math.inf  # a value q rules out adds nothing, whatever its weight
    if importance:
        return torch.where(possible, log_d + local, -math.inf).logsumexp(0)
    return torch.where(possible, log_d.exp() * local, 0.0).sum(0)
