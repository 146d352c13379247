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

    def __init__(self, init_loc_fn: Callable[[dict], Any]) -> None:
        self.init_loc_fn = init_loc_fn

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
        value = value.detach()
        expected = fn.batch_shape + fn.event_shape
        try:
            fits = torch.broadcast_shapes(value.shape, expected) == expected
        except RuntimeError:
            fits = False
        if not fits:
            raise InitValueError(
                f"init_loc_fn gave site {name!r} a value of shape {tuple(value.shape)}, which "
                f"does not broadcast to the site's shape {tuple(expected)}: give one value "
                f"per example of this call (that shape) or one that broadcasts to it (e.g. "
                f"one example's shape {tuple(fn.event_shape)})"
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
    parts = []
    for name, s in local_sites.items():
        site = trace.nodes[name]
        unconstrained = biject_to(site["fn"].support).inv(site["value"].detach())
        values = unconstrained.movedim(s["pos"], 0).reshape(rows, s["numel"])
        if getattr(site["value"], "_pyro_custom_init", True) is False:
            values = values[:1].expand(rows, -1)
        parts.append(values)
    return torch.cat(parts, -1)
