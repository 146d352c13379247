"""The data plate: the vectorized ``pyro.plate`` whose elements are the examples, found from
a model trace without assuming any plate or site name (see :func:`find_data_plate`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pyro.distributions import Unit
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample

__all__ = [
    "PARTICLE_PLATE",
    "DataPlate",
    "find_data_plate",
    "max_plate_nesting",
    "plates_of",
    "sample_sites",
]

#: The vectorized plate that evaluation wraps around guide and model to draw particles.
PARTICLE_PLATE = "_pyro_gen_particles"


@dataclass(frozen=True)
class DataPlate:
    """The vectorized plate whose elements are the examples of the data.

    Attributes:
        name: the plate's name.
        dim: its (negative) batch dimension.
    """

    name: str
    dim: int


def sample_sites(trace: Trace) -> Iterator[tuple[str, dict]]:
    """The sample sites of a trace, without the plates' own subsample sites."""
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            yield name, site


def plates_of(site: dict) -> dict[str, int]:
    """The vectorized plates enclosing a site, name to dim (evaluation's particle plate left
    out).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     with pyro.plate("data", 3, dim=-2), pyro.plate("features", 2):
        ...         pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> plates_of(pyro.poutine.trace(model).get_trace().nodes["x"])
        {'data': -2, 'features': -1}
    """
    return {
        f.name: f.dim for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE
    }


def max_plate_nesting(*traces: Trace) -> int:
    """How many batch dimensions the sites of ``traces`` use, counting plates and the
    distributions' own batch shapes, so a particle dimension can go left of all of them."""
    nesting = 0
    for trace in traces:
        for _, site in sample_sites(trace):
            dims = [-d for d in plates_of(site).values()]
            nesting = max(nesting, len(getattr(site["fn"], "batch_shape", ())), *dims)
    return nesting


def find_data_plate(
    model_trace: Trace, plate_name: str | None = None, rows: int | None = None
) -> DataPlate:
    """The plate over examples: ``plate_name`` when given, else the vectorized plate that
    encloses every observed site and, among those, the most sample sites (``pyro.factor``
    terms count as observed only in a model without other observations, and
    ``pyro.deterministic`` sites not at all). Where several tie (a plate over the examples
    at ``dim=-2`` and one over their features inside it, as in Pyro's tensor-shapes
    tutorial), the one of size ``rows``, the batch's first dimension, is the data plate
    when it alone has that size.

    Raises:
        ValueError: ``plate_name`` is not a vectorized plate of the model, or no single plate
            qualifies (none encloses every observed site, or several tie and ``rows`` does
            not tell them apart); the message asks for ``plate_name=``.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro import poutine
        >>> def model(x):
        ...     with pyro.plate("batch", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         with pyro.plate("pixels", x.shape[1]):
        ...             pyro.sample("x", dist.Normal(z, 1.0), obs=x.T)
        >>> find_data_plate(poutine.trace(model).get_trace(torch.zeros(5, 3)))
        DataPlate(name='batch', dim=-1)
        >>> def rows_by_features(x):  # both plates enclose both sites
        ...     with pyro.plate("features", x.shape[1]), pyro.plate("rows", x.shape[0], dim=-2):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> find_data_plate(poutine.trace(rows_by_features).get_trace(torch.zeros(5, 3)), rows=5)
        DataPlate(name='rows', dim=-2)
    """
    # pyro.deterministic records values, not data or densities: it says nothing of the plate.
    sites = [
        (name, site)
        for name, site in sample_sites(model_trace)
        if not site["infer"].get("_deterministic", False)
    ]
    plates: dict[str, int] = {}
    for _, site in sites:
        plates.update(plates_of(site))
    if plate_name is not None:
        if plate_name not in plates:
            raise ValueError(
                f"plate_name={plate_name!r} is not a vectorized plate of the model; its "
                f"vectorized plates are {sorted(plates)}: pass the name of the "
                "pyro.plate(...) whose elements are the examples"
            )
        return DataPlate(plate_name, plates[plate_name])
    observed = {name: plates_of(site) for name, site in sites if site["is_observed"]}
    # Data are observations proper; pyro.factor terms (a regularizer on global sites, ...)
    # decide only for a model that has nothing else.
    data = {n: p for n, p in observed.items() if not isinstance(model_trace.nodes[n]["fn"], Unit)}
    observed = data or observed
    if not observed:
        raise ValueError(
            "the model has no observed sample site (obs=...), so there is no data to score: "
            "observe the data in the model"
        )
    common = set(plates)
    for names in observed.values():
        common &= set(names)
    counts = {p: sum(p in plates_of(site) for _, site in sites) for p in common}
    best = max(counts.values(), default=0)
    winners = sorted(p for p, c in counts.items() if c == best)
    if len(winners) > 1 and rows is not None:
        sized = [p for p in winners if _sizes(sites, p) == {rows}]
        winners = sized if len(sized) == 1 else winners
    if len(winners) == 1:
        return DataPlate(winners[0], plates[winners[0]])
    if not winners:
        where = "; ".join(f"{n!r} in {sorted(p) or 'no plate'}" for n, p in observed.items())
        reason = f"no vectorized plate encloses every observed site ({where})"
    else:
        reason = f"plates {winners} each enclose every observed site and {best} sample sites"
        if rows is not None:
            reason += f" (and not one of them alone has the batch's {rows} rows)"
    raise ValueError(
        f"cannot tell which plate indexes the examples: {reason}. Pass plate_name= naming "
        "the vectorized pyro.plate(...) over the data's examples"
    )


def _sizes(sites: list[tuple[str, dict]], plate: str) -> set[int]:
    """The sizes ``plate`` has at ``sites`` (one, unless a site subsamples it otherwise)."""
    return {f.size for _, site in sites for f in site["cond_indep_stack"] if f.name == plate}
