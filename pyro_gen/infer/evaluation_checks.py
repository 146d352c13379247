"""Refusals shared by the evaluation estimators: counts that are not positive integers, and
joints with no density to estimate or weight by (data observed through a Delta, point-mass
guide sites)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from pyro.poutine import Trace

from pyro_gen.infer.log_weights import is_delta, sample_sites

__all__ = ["check_counts", "check_site_densities"]


def check_site_densities(
    guide_trace: Trace,
    model_trace: Trace,
    importance: bool,
    rerun: Callable[[Trace], Trace] | None = None,
) -> None:
    """Refuses a model that observes its data through a Delta (no likelihood to estimate),
    and point-mass guide sites for importance weighting (warns for the ELBO).

    ``rerun(trace)`` runs the guide again replaying ``trace``'s sites: with it, a guide that
    mixes auxiliary draws with point masses (an easyguide's ``map_estimate`` beside a
    ``group``, AutoDelta in an AutoGuideList) has its point masses told apart."""
    for name, site in sample_sites(model_trace):
        if site["is_observed"] and is_delta(site["fn"]):
            density = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            if not bool(torch.isfinite(density).all()):
                raise ValueError(
                    f"observed site {name!r} is a Delta (an implicit model, such as a GAN "
                    "generator): the data have density 0 under it almost everywhere, so "
                    "there is no likelihood to estimate. Score such a model by its samples "
                    "(pyro_gen.metrics: mode_coverage, sample_quality)"
                )
    latents = [(n, s) for n, s in sample_sites(guide_trace) if not s["is_observed"]]
    # An autoguide's Delta sites carry their density (a Jacobian) from an auxiliary draw;
    # without one they are point estimates (AutoDelta, MAP). An auxiliary draw that is a
    # point mass itself (AutoLaplaceApproximation's MAP point) gives them none.
    auxiliary = [s for _, s in latents if s["infer"].get("is_auxiliary", False)]
    points = [n for n, s in latents if is_delta(s["fn"]) and not s["infer"].get("is_auxiliary")]
    map_point = bool(auxiliary) and all(is_delta(s["fn"]) for s in auxiliary)
    if auxiliary and not map_point:
        # Some Deltas carry an auxiliary draw's density, others may be point masses (an
        # easyguide's map_estimate beside a group): a Delta whose value does not move when
        # the auxiliary draws do is a point mass. Without a rerun they are not told apart.
        points = _unmoved(guide_trace, points, rerun) if rerun is not None else []
    if not points:
        return
    kind = "Delta, as AutoDelta's or map_estimate's"
    if map_point:  # the density the user can evaluate instead
        kind = (
            "one MAP point, as AutoLaplaceApproximation's: its "
            "laplace_approximation(*args) is the guide with a density"
        )
    if importance:
        raise ValueError(
            f"guide sites {points} are point masses ({kind}): a point mass "
            "has no density to weight by, so the estimate would be log p(x, z) at those "
            "points, which is no bound on log p(x) (it can lie above it). Guide them with a "
            "density (AutoNormal, a flow guide), or use evaluate_elbo for the MAP objective"
        )
    warnings.warn(
        f"guide sites {points} are point masses ({kind}), so evaluate_elbo "
        "gives log p(x, z) at those points (the MAP objective, without the entropy a "
        "density would add), not a lower bound on log p(x)",
        stacklevel=5,
    )


def _unmoved(guide_trace: Trace, deltas: list[str], rerun: Callable[[Trace], Trace]) -> list[str]:
    """The sites of ``deltas`` whose values stay put when the guide runs again with every
    auxiliary draw shifted by one (every other sample site replayed as drawn, so no random
    number is drawn); none if a draw cannot be shifted (a discrete one) or that run fails
    (then nothing is refused)."""
    shifted = Trace()
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or name in deltas:
            continue
        if site["infer"].get("is_auxiliary", False):
            if not torch.is_floating_point(site["value"]):
                return []  # a Delta read off a discrete draw would look unmoved
            site = {**site, "value": site["value"] + 1.0}
        shifted.add_node(name, **site)
    try:
        again = rerun(shifted)
    except Exception:  # a guide that cannot take moved draws: keep the lenient reading
        return []
    unmoved = []
    for name in deltas:
        before, after = guide_trace.nodes[name]["value"], again.nodes.get(name, {}).get("value")
        if torch.is_tensor(after) and after.shape == before.shape and torch.equal(after, before):
            unmoved.append(name)
    return unmoved


def check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
