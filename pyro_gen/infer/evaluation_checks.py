"""Refusals shared by the evaluation estimators: counts that are not positive integers,
joints with no density to estimate or weight by (data observed through a Delta, point-mass
guide sites), and tensor data cut along a dimension that is not the data plate's."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from pyro.poutine import Trace

from pyro_gen.infer.batch_checks import plate_size_off_rows
from pyro_gen.infer.log_weights import DataPlate, is_delta, sample_sites

__all__ = ["check_counts", "check_sliced_rows", "check_site_densities"]


def check_sliced_rows(model_trace: Trace, plate: DataPlate, rows: int, examples: int) -> None:
    """Refuses tensor data that evaluation cuts into batches of ``rows`` rows (of
    ``examples``) when the data plate does not run over those rows.

    Each batch's log-weights are split along the data plate, so with another plate (the
    columns of a matrix of rows by columns, the plate over sequences of time-major data)
    every batch gave that plate's examples again, scored on part of their data: more values
    than examples, and latents of that plate counted once per batch.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):  # x: (rows, columns), a latent per column
        ...     with pyro.plate("columns", x.shape[1]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         with pyro.plate("rows", x.shape[0], dim=-2):
        ...             pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> trace = pyro.poutine.trace(model).get_trace(torch.zeros(2, 3))
        >>> check_sliced_rows(trace, DataPlate("columns", -1), rows=2, examples=5)
        Traceback (most recent call last):
        ...
        ValueError: evaluation cuts tensor data into batches along their first dimension ...
    """
    frames = [
        f
        for _, s in sample_sites(model_trace)
        for f in s["cond_indep_stack"]
        if f.name == plate.name
    ]
    size = plate_size_off_rows(frames, rows)
    if size is None:
        return
    raise ValueError(
        f"evaluation cuts tensor data into batches along their first dimension (here "
        f"{rows} rows of {examples}), but the data plate {plate.name!r} has size {size} on "
        "such a batch: its examples are not the data's rows, and each batch would score "
        "them again on part of their data. Pass plate_name= naming the plate over the "
        f"rows if the rows are the examples, batch_size={examples} (or more) to score the "
        "data whole, or put the examples first (e.g. x.transpose(0, 1))"
    )


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
