"""Initial locations for :class:`~pyro_gen.vae.autoguide.AutoAmortizedNormal`: a Pyro init
strategy (``init_loc_fn``, as for Pyro's autoguides) checked at each site, and the
per-example unconstrained values it gives the encoder's location head."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from pyro import poutine
from torch.distributions import biject_to


class InitValueError(Exception):
    """A bad value from ``init_loc_fn``. Not a ``ValueError`` while it crosses the model's
    trace, since Pyro's trace appends every site's shapes to a ``ValueError`` raised in the
    model, which would bury the one line that names the site."""


@contextmanager
def reported_init_errors() -> Iterator[None]:
    """Raises an :class:`InitValueError` from inside as the one-line ``ValueError`` it
    holds."""
    try:
        yield
    except InitValueError as error:
        raise ValueError(str(error)) from None


class CheckedInit:
    """Pyro's init strategy ``init_loc_fn``, with the value it gives each latent site checked
    there: it must broadcast to the site's shape (it is expanded to it, so one value serves
    every example of a plate) and lie in the site's support. Anything else raises
    :class:`InitValueError` naming the site, before the model computes with the value
    (Pyro's own ``InitMessenger`` lets a misshapen value through to fail somewhere
    downstream); :func:`reported_init_errors` turns it into a one-line ``ValueError``.

    A value of a subsampled plate's full size along that plate's dim (one value for every
    example of the data set, as Pyro's ``AutoNormal`` takes it: its locs are the values of
    every example, and each call reads those of the examples it takes) gives each example
    of the call its own: the value is indexed by the plate's subsample indices, read from
    ``plate_indices`` (name -> indices, or None where unknown), and the whole value is kept
    in :attr:`full_values` by site name, with the plates it spans. Without
    ``plate_indices`` such a value is passed on whole, as Pyro's own strategies pass it.

    Sites no continuous guide can cover (discrete, or a support no bijection reaches) get a
    prior draw instead, so that the guide's own error about them, which names the way out,
    is the one raised (Pyro's strategies would fail on them first).

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide import init_to_value
        >>> from pyro.infer.autoguide.initialization import InitMessenger
        >>> def model():
        ...     with pyro.plate("data", 3):
        ...         return pyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> InitMessenger(CheckedInit(init_to_value(values={"s": 2.0})))(model)()
        tensor([2., 2., 2.])
        >>> with reported_init_errors():
        ...     InitMessenger(CheckedInit(init_to_value(values={"s": -1.0})))(model)()
        Traceback (most recent call last):
        ...
        ValueError: init_loc_fn gave site 's' a value outside its support ...
    """

    def __init__(
        self,
        init_loc_fn: Callable[[dict], Any],
        plate_indices: Callable[[str], torch.Tensor | None] | None = None,
    ) -> None:
        self.init_loc_fn = init_loc_fn
        self.plate_indices = plate_indices
        self.full_values: dict[str, tuple[torch.Tensor, tuple[str, ...]]] = {}

    def read_plate_indices(self, plate_indices: Callable[[str], torch.Tensor | None]) -> None:
        """Where to read the subsample indices of the plates in the run being traced."""
        self.plate_indices = plate_indices

    def _of_the_call(self, value: torch.Tensor, site: dict) -> torch.Tensor:
        """The values of the examples this call's subsampled plates took, where ``value``
        spans such a plate at its full size (see the class docstring)."""
        fn, taken, whole = site["fn"], [], value
        if self.plate_indices is None:
            return value
        for f in site["cond_indep_stack"]:
            if f.dim is None or not f.full_size or f.full_size == f.size:
                continue
            pos = value.dim() + f.dim - len(fn.event_shape)
            indices = self.plate_indices(f.name) if pos >= 0 else None
            if indices is None or value.shape[pos] != f.full_size:
                continue
            value = value.index_select(pos, indices.to(value.device))
            taken.append(f.name)
        if taken:
            self.full_values[site["name"]] = (whole, tuple(taken))
        return value

    def __call__(self, site: dict) -> torch.Tensor:
        fn, name = site["fn"], site["name"]
        if fn.support.is_discrete or not _reachable(fn.support):
            return fn.sample().detach()  # refused by name later (check_latent_sites)
        value = self.init_loc_fn(site)
        # Pyro marks a strategy's own values (init_to_median, init_to_sample, ...) with
        # _pyro_custom_init = False; values the user chose (init_to_value) are unmarked
        generated = getattr(value, "_pyro_custom_init", True) is False
        if not torch.is_tensor(value):
            value = torch.as_tensor(value, dtype=torch.get_default_dtype())
        value = self._of_the_call(value.detach(), site)
        expected = fn.batch_shape + fn.event_shape
        if self.plate_indices is None and value.shape == _full_shape(site):
            # no indices to read (the global sites' AutoNormal traces the model itself):
            # passed on whole, as Pyro's strategies pass it, for AutoNormal to keep
            expected = value.shape
        try:
            fits = torch.broadcast_shapes(value.shape, expected) == expected
        except RuntimeError:
            fits = False
        if not fits:
            full = _full_shape(site)
            whole = f", one per example of the data set ({tuple(full)})" if full else ""
            raise InitValueError(
                f"init_loc_fn gave site {name!r} a value of shape {tuple(value.shape)}, which "
                f"does not broadcast to the site's shape {tuple(expected)}: give one value "
                f"per example of this call (that shape){whole} or one that broadcasts to it "
                f"(e.g. one example's shape {tuple(fn.event_shape)})"
            )
        # a copy, not a view: Pyro's AutoNormal makes its parameters from these values
        value = value.expand(expected).clone()
        inside = fn.support.check(value)
        if not bool(inside.all()):
            raise InitValueError(
                f"init_loc_fn gave site {name!r} a value outside its support {fn.support} "
                f"({int((~inside).sum())} of {inside.numel()} entries, e.g. "
                f"{value.reshape(inside.shape + (-1,))[~inside][0].tolist()}): give a value "
                f"in the support"
            )
        value._pyro_custom_init = not generated  # kept: Pyro's reparam handlers read it
        return value


def _full_shape(site: dict) -> torch.Size | None:
    """The site's shape with its subsampled plates at full size; None without such plates."""
    fn = site["fn"]
    shape = list(fn.batch_shape + fn.event_shape)
    subsampled = False
    for f in site["cond_indep_stack"]:
        pos = len(fn.batch_shape) + f.dim if f.dim is not None else -1
        if f.full_size and f.full_size != f.size and pos >= 0:
            shape[pos], subsampled = f.full_size, True
    return torch.Size(shape) if subsampled else None


def _reachable(support: Any) -> bool:
    try:
        biject_to(support)
    except NotImplementedError:
        return False
    return True


def per_example_locs(
    trace: poutine.Trace, local_sites: dict[str, dict[str, Any]], rows: int
) -> torch.Tensor:
    """The unconstrained value of every local site in ``trace``, one row per example of the
    data plate, in the encoder's output order: ``(rows, total)``, the inverse of
    :func:`~pyro_gen.vae.autoguide_encoder.local_params`'s layout.

    Where a Pyro strategy made the values (marked ``_pyro_custom_init = False``), every
    example takes the first example's: what varies between examples there is the
    strategy's noise (``init_to_median``'s estimate from 15 draws) or its randomness
    (``init_to_sample``, ``init_to_uniform``), which an encoder could hold only with large
    weights fitted to noise (from those, 150 steps did not bring the posterior of a
    prior-only model back to the prior); the first example's value is still a median
    estimate, a prior draw or a uniform point, consistent with the values of the sites it
    depends on. Values the user gave (``init_to_value``, a function of their own) are kept
    per example.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> from pyro_gen.vae.autoguide_encoder import local_site
        >>> def model():
        ...     with pyro.plate("data", 2):
        ...         pyro.sample("s", dist.LogNormal(0.0, 1.0).expand([3]).to_event(1))
        >>> trace = poutine.trace(poutine.condition(model, {"s": torch.ones(2, 3)})).get_trace()
        >>> sites = {"s": local_site(trace.nodes["s"], trace.nodes["s"]["cond_indep_stack"][0])}
        >>> per_example_locs(trace, sites, rows=2)  # log 1 = 0
        tensor([[0., 0., 0.],
                [0., 0., 0.]])
    """
    return torch.cat([_site_locs(trace.nodes[n], s, rows) for n, s in local_sites.items()], -1)


def _site_locs(site: dict, s: dict[str, Any], rows: int) -> torch.Tensor:
    """One local site's unconstrained values, ``(rows, numel)`` (see
    :func:`per_example_locs`)."""
    unconstrained = biject_to(site["fn"].support).inv(site["value"].detach())
    values = unconstrained.movedim(s["pos"], 0).reshape(rows, s["numel"])
    if getattr(site["value"], "_pyro_custom_init", True) is False:
        values = values[:1].expand(rows, -1)
    return values


def full_plate_locs(
    trace: poutine.Trace,
    local_sites: dict[str, dict[str, Any]],
    full_values: dict[str, tuple[torch.Tensor, tuple[str, ...]]],
    plate: str,
    full_size: int,
) -> torch.Tensor | None:
    """The unconstrained locations of every example of the data set, ``(full_size,
    total)``, where the init values give them all: some local site was given one value per
    example of the subsampled data plate (see :class:`CheckedInit`) and every other local
    site one value common to the examples. None otherwise (a site with values for the
    call's examples only), when only the call's examples can be fitted.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide.initialization import InitMessenger
        >>> from pyro_gen.vae.autoguide_encoder import local_site
        >>> def model():
        ...     with pyro.plate("data", 4, subsample=torch.tensor([3, 1])):
        ...         pyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> init = CheckedInit(lambda site: torch.tensor([1.0, 2.0, 3.0, 4.0]))
        >>> init.read_plate_indices(lambda name: torch.tensor([3, 1]))
        >>> trace = poutine.trace(InitMessenger(init)(model)).get_trace()
        >>> trace.nodes["s"]["value"]  # the call's examples, 3 and 1
        tensor([4., 2.])
        >>> frame = trace.nodes["s"]["cond_indep_stack"][0]
        >>> sites = {"s": local_site(trace.nodes["s"], frame)}
        >>> full_plate_locs(trace, sites, init.full_values, "data", 4).exp().flatten()
        tensor([1., 2., 3., 4.])
    """
    if not any(plates == (plate,) for _, plates in full_values.values()):
        return None
    parts = []
    for name, s in local_sites.items():
        site = trace.nodes[name]
        frame = next(f for f in site["cond_indep_stack"] if f.name == plate)
        if name in full_values and full_values[name][1] == (plate,):
            shape = list(site["value"].shape)
            shape[len(shape) - len(site["fn"].event_shape) + frame.dim] = full_size
            whole = full_values[name][0].expand(shape)
            unconstrained = biject_to(site["fn"].support).inv(whole)
            parts.append(unconstrained.movedim(s["pos"], 0).reshape(full_size, s["numel"]))
            continue
        values = _site_locs(site, s, frame.size)
        if name in full_values or not bool((values == values[:1]).all()):
            return None  # values for the call's examples only, or over other plates too
        parts.append(values[:1].expand(full_size, -1))
    return torch.cat(parts, -1)
