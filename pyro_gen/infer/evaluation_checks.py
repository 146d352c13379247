"""Refusals shared by the evaluation estimators: counts that are not positive integers, and
joints with no density to estimate or weight by (data observed through a Delta, point-mass
guide sites)."""

from __future__ import annotations

import warnings

import torch
from pyro.poutine import Trace

from pyro_gen.infer.log_weights import is_delta, sample_sites

__all__ = ["check_counts", "check_site_densities"]


def check_site_densities(guide_trace: Trace, model_trace: Trace, importance: bool) -> None:
    """Refuses a model that observes its data through a Delta (no likelihood to estimate),
    and point-mass guide sites for importance weighting (warns for the ELBO)."""
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
    # point mass itself (AutoLaplaceApproximation's MAP point) gives them none. (Where only
    # some are, as in a list of such guides, the sites are not told apart: no refusal.)
    auxiliary = [s for _, s in latents if s["infer"].get("is_auxiliary", False)]
    if auxiliary and not all(is_delta(s["fn"]) for s in auxiliary):
        return
    points = [n for n, s in latents if is_delta(s["fn"]) and not s["infer"].get("is_auxiliary")]
    if not points:
        return
    kind = "Delta, as AutoDelta's"
    if auxiliary:  # the density the user can evaluate instead
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


def check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
