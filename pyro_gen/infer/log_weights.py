"""Per-example importance log-weights from a model trace and a guide trace.

For a model :math:`p(g) \\prod_i p(x_i, z_i \\mid g)` and a guide
:math:`q(g) \\prod_i q(z_i \\mid x_i, g)`, one joint draw from the guide has the log-weight

.. math::

    \\log \\frac{p(g)}{q(g)} + \\sum_i \\log \\frac{p(x_i, z_i \\mid g)}{q(z_i \\mid x_i, g)},

and this module splits it into the *global* part (sites outside the data plate) and one
*local* part per example (sites inside it), read off the traces without assuming any site
or plate name; discrete sites that ``poutine.enum`` enumerated, in the model or in the guide
(:mod:`~pyro_gen.infer.evaluation_guide_enumeration`), are summed out of each example's part.
The estimators of :mod:`pyro_gen.infer.evaluation` are built on the split.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from pyro.distributions import Delta
from pyro.distributions.util import scale_and_mask
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine import Trace
from torch.distributions import kl_divergence

from pyro_gen.infer.evaluation_guide_enumeration import (
    enumeration_log_weight,
    guide_enumerated_sites,
    sum_out_guide_enumeration,
)
from pyro_gen.infer.evaluation_plate import (
    PARTICLE_PLATE,
    DataPlate,
    find_data_plate,
    max_plate_nesting,
    plates_of,
    sample_sites,
)

# The data plate's helpers are re-exported: they were defined here before their module.
__all__ = [
    "PARTICLE_PLATE",
    "DataPlate",
    "LogWeights",
    "check_guide_plates",
    "enumerated",
    "enumeration_problem",
    "example_scale",
    "find_data_plate",
    "is_delta",
    "max_plate_nesting",
    "sample_sites",
    "scaled_site",
    "split_log_weights",
]


@dataclass(frozen=True)
class LogWeights:
    """The split log-weights of ``K`` particles on a batch of ``B`` examples.

    Attributes:
        local: shape ``(K, B)``: each example's log p - log q summed over its sites, with
            enumerated discrete sites summed out.
        shared: shape ``(K,)``: log p - log q of the sites outside the data plate.
        global_sites: guide sample sites outside the data plate (global latents).
        prior_sites: model latents without a guide site that were drawn from the model
            itself (not enumerated).
        has_shared: whether any site lies outside the data plate.
    """

    local: torch.Tensor
    shared: torch.Tensor
    global_sites: tuple[str, ...]
    prior_sites: tuple[str, ...]
    has_shared: bool


def _data_frame(site: dict, plate: DataPlate) -> Any:
    return next((f for f in site["cond_indep_stack"] if f.name == plate.name), None)


def example_scale(site: dict, plate: DataPlate) -> float | torch.Tensor:
    """The site's scale without the data plate's subsampling factor N/B (so that each
    example counts once): what ``poutine.scale`` and other subsampled plates give it."""
    scale = site["scale"]
    frame = _data_frame(site, plate)
    if frame is not None and frame.full_size is not None and frame.full_size != frame.size:
        scale = scale * frame.size / frame.full_size
    return scale


def scaled_site(plate: DataPlate, *traces: Trace) -> str | None:
    """Says which sample site of ``traces`` has a scale other than 1 (0, which masks an
    element out, aside) once the data plate's N/B is removed, and where the scale comes
    from; None when there is none. Such a site's log-weight is a reweighted estimate, not a
    log density ratio, so its exp is no importance weight.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro import poutine
        >>> def model():
        ...     with pyro.plate("data", 3), poutine.scale(scale=0.5):
        ...         pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(3))
        >>> scaled_site(DataPlate("data", -1), poutine.trace(model).get_trace())
        "site 'x' has scale 0.5 (poutine.scale)"
    """
    for trace in traces:
        for name, site in sample_sites(trace):
            scale = torch.as_tensor(example_scale(site, plate), dtype=torch.float64)
            if bool(((scale == 0) | torch.isclose(scale, torch.ones(()).double())).all()):
                continue
            subsampled = [
                f.name
                for f in site["cond_indep_stack"]
                if f.name != plate.name and f.full_size is not None and f.full_size != f.size
            ]
            how = (
                f"plate {subsampled[0]!r} subsamples its elements and reweights them"
                if subsampled
                else "poutine.scale"
            )
            value = (
                f"{float(scale):g}"
                if scale.numel() == 1
                else f"between {float(scale.min()):g} and {float(scale.max()):g}"
            )
            return f"site {name!r} has scale {value} ({how})"
    return None


def _site_log_prob(
    site: dict, plate: DataPlate, density: torch.Tensor | None = None
) -> tuple[torch.Tensor, bool]:
    """The site's log-density (or ``density`` in its place) with its mask and user scale
    but without the data plate's subsampling scale N/B (each example is counted once); and
    whether it is per example."""
    if density is None:
        density = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    scale = example_scale(site, plate)
    return scale_and_mask(density, scale, site["mask"]), _data_frame(site, plate) is not None


def _reduce(log_prob: torch.Tensor, particle_dim: int, data_dim: int | None) -> torch.Tensor:
    """Sums every plate dim of ``log_prob`` but the data plate's, keeping the particle dim
    and the enumeration dims left of it: shape ``(*enum, K or 1[, B or 1])``."""
    log_prob = torch.as_tensor(log_prob)
    ndim = max(log_prob.dim(), -particle_dim)
    log_prob = log_prob.reshape((1,) * (ndim - log_prob.dim()) + log_prob.shape)
    kept = set(range(ndim + particle_dim + 1))
    if data_dim is not None:
        kept.add(ndim + data_dim)
    summed = [d for d in range(ndim) if d not in kept]
    return log_prob.sum(summed) if summed else log_prob


def enumerated(site: dict) -> bool:
    """Whether ``poutine.enum`` enumerated the site (its values lie along a new dim)."""
    return site["infer"].get("_enumerate_dim") is not None


def enumeration_problem(
    model_trace: Trace, plate: DataPlate, guide_trace: Trace | None = None
) -> str | None:
    """Why the enumerated sites of ``model_trace`` cannot be summed out example by example,
    or None when they can: each must lie in the data plate (it may lie in plates inside it
    too, such as each word's topic in a document, and form ``pyro.markov`` chains, such as
    a sequence's hidden states); one outside it would couple the examples. Sites of
    ``guide_trace`` (enumerated there, replayed in the model) are the guide's to check."""
    guided = guide_trace.nodes if guide_trace is not None else {}
    for name, site in sample_sites(model_trace):
        if not enumerated(site) or name in guided:
            continue
        plates = set(plates_of(site))
        if plate.name not in plates:
            return (
                f"enumerated site {name!r} is in plates {sorted(plates)}, outside the data "
                f"plate {plate.name!r}, so it couples the examples"
            )
    return None


def _enumerated_log_weight(
    model_trace: Trace, plate: DataPlate, guided: set[str]
) -> tuple[torch.Tensor, set[str]] | None:
    """Each example's log-density of the model sites that depend on enumerated sites, with
    those summed out: the sites' factors are contracted by Pyro's plated sum-product (a
    sum over each enumerated value inside every plate element, a product over plate
    elements) down to the particle and data plates, as ``TraceEnum_ELBO`` contracts them.
    Masks apply inside the sum and the (common) scale outside, as there. Pyro's packing
    gives each site of a ``pyro.markov`` chain its own symbols although the chain reuses
    dims, so the sum runs along the chain (the forward algorithm of an HMM). Returns the
    unpacked tensor and the names of the sites it covers, or None without enumeration.
    Sites the guide enumerated (``guided``, replayed) keep their enumeration dims, as in
    ``TraceEnum_ELBO``: the guide's sum over them is taken afterwards.

    Raises:
        ValueError: the sites have different scales (besides the data plate's N/B).
    """
    if not any(enumerated(s) and n not in guided for n, s in sample_sites(model_trace)):
        return None
    model_trace.compute_log_prob()
    model_trace.pack_tensors()
    kept = set(model_trace.plate_to_symbol.values())
    enum_dims: set[str] = set()
    for name, site in sample_sites(model_trace):
        if name in guided:
            kept.add(site["infer"]["_dim_to_symbol"][site["infer"]["_enumerate_dim"]])
        elif enumerated(site):
            enum_dims.update(site["packed"]["unscaled_log_prob"]._pyro_dims)
    enum_dims -= kept
    tree: OrderedDict[frozenset, list[torch.Tensor]] = OrderedDict()
    covered, scales = set(), []
    for name, site in sample_sites(model_trace):
        log_prob = site["packed"]["unscaled_log_prob"]
        if enum_dims.isdisjoint(log_prob._pyro_dims):
            continue
        sampled = site["infer"].get("num_samples") is not None
        if enumerated(site) and name not in guided and sampled:
            log_prob = _sampled_enumeration_factor(log_prob, site["infer"]["num_samples"])
        ordinal = frozenset(
            model_trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized
        )
        tree.setdefault(ordinal, []).append(
            packed.scale_and_mask(log_prob, mask=site["packed"]["mask"])
        )
        covered.add(name)
        scales.append((name, example_scale(site, plate)))
    first_name, scale = scales[0]
    for name, other in scales[1:]:
        if not bool(torch.all(torch.as_tensor(other) == torch.as_tensor(scale))):
            raise ValueError(
                f"sites {first_name!r} and {name!r} depend on an enumerated site and have "
                "different scales (poutine.scale), so its sum cannot be weighted by one: give "
                "them the same scale"
            )
    # The particle and data plates are kept, where the factors have their dims (the caller
    # broadcasts the rest); every other plate is a product, each enumerated dim a sum.
    present = set().union(*(t._pyro_dims for terms in tree.values() for t in terms))
    target = frozenset(
        model_trace.plate_to_symbol[name]
        for name in (PARTICLE_PLATE, plate.name)
        if model_trace.plate_to_symbol.get(name) in present
    )
    contracted = contract_to_tensor(tree, enum_dims, target_ordinal=target)
    return packed.unpack(contracted, model_trace.symbol_to_dim) * scale, covered


def _sampled_enumeration_factor(log_prob: torch.Tensor, num_samples: int) -> torch.Tensor:
    """The factor of a site enumerated by ``num_samples`` draws from its own (conditional)
    prior (``infer={"enumerate": "parallel", "num_samples": S}``, Tensor Monte Carlo), not
    over its support: summing its density over the draws would weigh each by p(z_k) twice
    (the estimate of log p(x) rose above log p(x)). As in ``TraceTMC_ELBO``, its density
    cancels against the proposal's and each draw weighs 1/S."""
    factor = torch.full_like(log_prob, -math.log(num_samples))
    factor._pyro_dims = log_prob._pyro_dims
    return factor


def is_delta(fn: Any) -> bool:
    """Whether ``fn`` is a Delta, possibly wrapped (Independent, masked, expanded)."""
    while not isinstance(fn, Delta) and hasattr(fn, "base_dist"):  # Independent, masked, ...
        fn = fn.base_dist
    return isinstance(fn, Delta)


def _analytic_kl(model_trace: Trace, guide_latents: dict[str, dict]) -> dict[str, torch.Tensor]:
    """KL(q || p) per latent where torch knows it in closed form, by site name.

    A Delta guide site is left to its log-density: Pyro's KL(Delta || p) is -log p(v),
    which drops the Delta's own density, the Jacobian an autoguide (AutoNormal on a
    constrained site, AutoAmortizedNormal's globals) gives it from its unconstrained draw.
    """
    kl = {}
    for name, q_site in guide_latents.items():
        p_site = model_trace.nodes.get(name)
        if p_site is None or p_site["is_observed"] or enumerated(p_site):
            continue
        if is_delta(q_site["fn"]):
            continue  # its log-density term is exact and costs nothing
        try:
            kl[name] = kl_divergence(q_site["fn"], p_site["fn"])
        except NotImplementedError:
            continue
    return kl


def check_guide_plates(model_trace: Trace, guide_trace: Trace, plate: DataPlate) -> None:
    """Refuses a guide latent that the model holds in the data plate while the guide holds
    it in a plate of another name: its weight would count as one draw shared by the whole
    batch, and the estimate silently became a joint one (Pyro only warns, "Found plate
    statements in guide but not model"). A guide site in no plate (a joint guide, as
    ``AutoMultivariateNormal``'s latent) is such a draw by design, and is left alone.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x):
        ...     with pyro.plate("data", 3):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     with pyro.plate("batch", 3):
        ...         pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> x = torch.zeros(3)
        >>> g = pyro.poutine.trace(guide).get_trace(x)
        >>> m = pyro.poutine.trace(pyro.poutine.replay(model, trace=g)).get_trace(x)
        >>> check_guide_plates(m, g, find_data_plate(m, None))
        Traceback (most recent call last):
        ...
        ValueError: guide site 'z' lies in the guide's plate 'batch' but in the model's data ...
    """
    for name, site in sample_sites(guide_trace):
        model_site = model_trace.nodes.get(name)
        if site["is_observed"] or model_site is None:
            continue
        in_model = {f.name for f in model_site["cond_indep_stack"] if f.vectorized}
        in_guide = {f.name for f in site["cond_indep_stack"] if f.vectorized}
        other = sorted(in_guide - in_model)
        if plate.name in in_model and plate.name not in in_guide and other:
            raise ValueError(
                f"guide site {name!r} lies in the guide's plate {other[0]!r} but in the "
                f"model's data plate {plate.name!r}: each example's weight needs the guide's "
                f"plate over the examples to be the model's. Name it {plate.name!r} in the guide"
            )


def split_log_weights(
    model_trace: Trace,
    guide_trace: Trace,
    plate: DataPlate,
    *,
    particle_dim: int,
    num_particles: int = 1,
    analytic_kl: bool = False,
    importance: bool = False,
) -> LogWeights:
    """Splits log p - log q of one joint draw into per-example and global parts.

    Observed model sites and model latents with a guide site count with +log p, guide
    latents with -log q, auxiliary ones included (an autoguide's unconstrained draw, whose
    guide site is a Delta carrying the Jacobian), as Pyro's ELBOs count them. Model latents
    that ``poutine.enum`` enumerated are summed out of each example's weight (they must
    pass :func:`enumeration_problem`); so are guide latents that it enumerated (see
    :mod:`~pyro_gen.infer.evaluation_guide_enumeration`): as an expectation under the guide,
    or inside the importance weight when ``importance``. Any other model latent without a
    guide site was drawn from the model's own conditional, which is then its proposal, so
    its density cancels and it is left out.

    Args:
        model_trace: the model replayed against ``guide_trace``.
        guide_trace: the guide's trace.
        plate: the data plate (see :func:`find_data_plate`).
        particle_dim: the dim of the particle plate, left of every plate; enumeration dims
            are left of it. Without a particle plate the dim has size 1.
        num_particles: ``K``, the size of the particle plate (1 without one).
        analytic_kl: replace log q - log p of a latent by KL(q || p) where it is known in
            closed form, as ``TraceMeanField_ELBO`` does (the same expectation, less noise;
            for an ELBO, not for importance weights).
        importance: sum the guide's enumerated values :math:`y` out of the importance
            weight, :math:`\\log \\sum_y q(y) w(y)`, instead of taking
            :math:`\\sum_y q(y) \\log w(y)`, the ELBO's expectation.

    Raises:
        ValueError: a guide latent is not a model site or is observed there, or the data
            plate is missing; or (a ``GuideEnumerationError``) a guide site is enumerated
            where it cannot be summed out per example.
    """
    guide_latents = {
        name: site for name, site in sample_sites(guide_trace) if not site["is_observed"]
    }
    for name, site in guide_latents.items():
        # An auxiliary site (an autoguide's unconstrained draw) is part of log q only.
        if name not in model_trace.nodes and not site["infer"].get("is_auxiliary", False):
            raise ValueError(
                f"guide site {name!r} is not a sample site of the model: a guide must sample "
                "only the model's latent sites (check the site names)"
            )
        if model_trace.nodes.get(name, {}).get("is_observed"):
            # its -log q would be counted against a log p of the observed value
            raise ValueError(
                f"guide site {name!r} is observed in the model (obs= or pyro.condition): a "
                "guide samples only the model's latent sites; leave it out of the guide"
            )
    check_guide_plates(model_trace, guide_trace, plate)
    guide_enumerated = guide_enumerated_sites(guide_trace, plate, particle_dim)
    summed_out = _enumerated_log_weight(model_trace, plate, set(guide_enumerated))
    covered = summed_out[1] if summed_out is not None else set()
    # a latent whose prior depends on a summed-out site is part of that sum, not a KL
    kl = _analytic_kl(model_trace, guide_latents) if analytic_kl else {}
    kl = {name: value for name, value in kl.items() if name not in covered}
    terms: list[tuple[dict, float, torch.Tensor | None]] = []
    prior_sites = []
    for name, site in sample_sites(model_trace):
        if name in kl or name in covered:
            continue  # the guide's term carries KL(q || p) for both; or summed out below
        if site["is_observed"] or name in guide_latents or enumerated(site):
            terms.append((site, 1.0, None))
        else:
            prior_sites.append(name)
    terms += [(site, -1.0, kl.get(name)) for name, site in guide_latents.items()]

    batch_size = None
    for site in [s for s, _, _ in terms] + [model_trace.nodes[n] for n in covered]:
        for f in site["cond_indep_stack"]:
            if f.name == plate.name and f.vectorized:
                batch_size = int(f.size)
    if batch_size is None:
        raise ValueError(
            f"no sample site of this batch lies in the data plate {plate.name!r}: every "
            "batch must run the model's pyro.plate over its examples"
        )
    K, B = num_particles, batch_size
    local = torch.zeros(())
    shared = torch.zeros(())
    has_shared = False
    global_sites = []
    for site, sign, density in terms:
        log_prob, is_local = _site_log_prob(site, plate, density)
        if is_local:
            local = local + sign * _reduce(log_prob, particle_dim, plate.dim)
        else:
            has_shared = True
            shared = shared + sign * _reduce(log_prob, particle_dim, None)
            if sign < 0:
                global_sites.append(site["name"])
    if summed_out is not None:  # the enumerated sites and those depending on them
        local = local + _reduce(summed_out[0], particle_dim, plate.dim)
    if guide_enumerated:
        log_d = sum(
            _reduce(enumeration_log_weight(guide_trace.nodes[name]), particle_dim, plate.dim)
            for name in guide_enumerated
        )
        local = sum_out_guide_enumeration(local, log_d, particle_dim, importance)
    return LogWeights(
        local=local.expand(K, B),
        shared=shared.to(local.device).expand(K),
        global_sites=tuple(global_sites),
        prior_sites=tuple(prior_sites),
        has_shared=has_shared,
    )
