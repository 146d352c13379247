"""A ``pyro.param`` whose initial value lies outside its constraint.

Pyro stores a constrained parameter as the inverse of ``transform_to(constraint)`` applied to
its initial value: ``log`` for ``positive``, ``logit`` for ``unit_interval``. A value outside
the constraint has no preimage (``log(-1)`` is NaN) and one on its boundary an infinite one
(``log(0)``), which no gradient step moves. Pyro takes such a value without a word; the run
then fails inside a distribution ("Expected parameter scale ... to satisfy the constraint
GreaterThan(lower_bound=0.0), but found invalid values: nan") naming neither the parameter
nor its initial value. Here the first run's error is raised again with both.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyro
import torch
from torch.distributions import constraints

__all__ = ["ParamInitError", "check_param_values", "explain_param_values"]


_UNCONSTRAINED = (constraints.real, constraints.real_vector)


class ParamInitError(ValueError):
    """A ``pyro.param`` was given an initial value outside (or on the edge of) its constraint.

    A ``ValueError``, as Pyro's own refusal of the value it replaces.

    Example:
        >>> pyro.clear_param_store()
        >>> _ = pyro.param("p", torch.tensor(-2.0), constraint=constraints.positive)
        >>> try:
        ...     check_param_values(["p"])
        ... except ValueError as e:
        ...     print(type(e).__name__, str(e).split(" was")[0])
        ParamInitError pyro.param('p')
    """


def _bad_params(names: Iterable[str], *, edges: bool) -> list[str]:
    """What is wrong with each of ``names`` (params in the store) that has a constraint:
    a NaN unconstrained value, or with ``edges`` an infinite one. Unconstrained params are
    left alone: their value is what the user wrote (a structural ``-inf`` logit), not the
    image of one, and a NaN among them is a non-finite loss's to report."""
    store = pyro.get_param_store()
    found = []
    for name in names:
        if name not in store:
            continue
        constraint = store._constraints.get(name, constraints.real)
        unconstrained = store._params[name]
        # no preimage is taken for these; a "meta" tensor has no values to read
        if constraint in _UNCONSTRAINED or unconstrained.is_meta:
            continue
        nan = torch.isnan(unconstrained).any()
        if not (nan or (edges and torch.isinf(unconstrained).any())):
            continue
        where, what = ("outside", "NaN") if nan else ("on the edge of", "infinite")
        found.append(
            f"pyro.param({name!r}) was given an initial value {where} its constraint "
            f"{constraint} (its unconstrained value is {what})"
        )
    return found


def _message(found: list[str]) -> str:
    return (
        f"{'; '.join(found)}: Pyro optimizes such a parameter through the inverse of "
        "transform_to(constraint) (log for positive, logit for unit_interval), which has no "
        "finite value there, so it cannot train. Give an initial value strictly inside the "
        "constraint (torch.tensor(1.0) for a positive scale)"
    )


def explain_param_values(error: Exception, registered: Iterable[str]) -> None:
    """Raises :class:`ParamInitError` from ``error`` when one of the params ``registered``
    (those the failing run made) starts outside or on the edge of its constraint; else returns.

    Example:
        >>> pyro.clear_param_store()
        >>> try:
        ...     scale = pyro.param("scale", torch.tensor(-1.0), constraint=constraints.positive)
        ...     pyro.distributions.Normal(0.0, scale, validate_args=True)
        ... except ValueError as e:
        ...     explain_param_values(e, ["scale"])
        Traceback (most recent call last):
        ...
        pyro_gen.infer.param_values.ParamInitError: pyro.param('scale') was given an initial ...
    """
    found = _bad_params(registered, edges=True)
    if found:
        raise ParamInitError(_message(found)) from error


def check_param_values(names: Iterable[str]) -> None:
    """Raises :class:`ParamInitError` when one of the params ``names`` with a constraint
    holds a NaN unconstrained value (a run that did not fail on it would train to a NaN
    loss).

    Example:
        >>> pyro.clear_param_store()
        >>> _ = pyro.param("rate", torch.tensor(-2.0), constraint=constraints.positive)
        >>> check_param_values(["rate"])
        Traceback (most recent call last):
        ...
        pyro_gen.infer.param_values.ParamInitError: pyro.param('rate') was given an initial ...
    """
    found = _bad_params(names, edges=False)
    if found:
        raise ParamInitError(_message(found))
