"""The base of pyro_gen's prior modules: one clear error when a module is handed to
``pyro.sample`` uncalled.

A prior module (:class:`~pyro_gen.distributions.vamp.VampPrior`, a mixture or flow prior)
builds its distribution when called, ``pyro.sample("z", prior())``. Passed uncalled,
``pyro.sample("z", prior)`` is accepted by Pyro, which treats any callable as a stochastic
function: the site's "sample" became the distribution object itself, and the program failed
later and far away (``linear(): argument 'input' must be Tensor, not GaussianMixture``), or,
where a guide supplied the value, with ``'VampPrior' object has no attribute 'log_prob'``.
A module cannot stand in for a distribution (it has no batch shape for plates to expand),
so the fix is to say so at the site.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import pyro.poutine.runtime
import pyro.primitives
import torch

from pyro_gen.transforms._base import PicklableModule

__all__ = ["PriorModule", "refuse_as_scored_site", "site_holding", "uncalled_message"]

# the two places where pyro.sample calls its fn: outside any handler, and in the default
# step of the handler stack (where a trace, plate or SVI runs it); matched by code object,
# so another Pyro version can only miss the check, never raise it wrongly
_SAMPLE_CODE = pyro.primitives.sample.__code__
_STACK_CODE = pyro.poutine.runtime.default_process_message.__code__
# where a trace scores each site with site["fn"].log_prob(site["value"])
_SCORE_CODE = pyro.poutine.Trace.compute_log_prob.__code__


def uncalled_message(module: torch.nn.Module, site: str | None) -> str:
    """The one error for a prior module handed to ``pyro.sample`` uncalled, naming the site
    when it is known.

    Example:
        >>> uncalled_message(torch.nn.Identity(), "z")[:60]
        "pyro.sample site 'z' was given the Identity module itself, n"
    """
    name = type(module).__name__
    where = f"pyro.sample site {site!r}" if site else "pyro.sample"
    return (
        f"{where} was given the {name} module itself, not a distribution: a prior module "
        f"builds its distribution when called, so write pyro.sample({site or 'name'!r}, "
        f"prior()) (prior(context) for a conditional prior)"
    )


def _site_of_pyro_sample(frame: FrameType | None) -> str | None:
    """The site name when ``frame`` is Pyro calling a sample site's fn, else None."""
    if frame is None:
        return None
    if frame.f_code is _STACK_CODE:
        msg = frame.f_locals.get("msg")
        if isinstance(msg, dict) and msg.get("type") == "sample":
            return str(msg.get("name"))
    elif frame.f_code is _SAMPLE_CODE:
        return str(frame.f_locals.get("name"))
    return None


class PriorModule(PicklableModule):
    """A module whose call returns a Pyro distribution, refusing to be used as one.

    Example:
        >>> import pyro
        >>> from pyro_gen.distributions.mixture import MixturePrior
        >>> prior = MixturePrior(2, num_components=3)
        >>> pyro.sample("z", prior()).shape  # called: a draw from the mixture
        torch.Size([2])
        >>> pyro.sample("z", prior)
        Traceback (most recent call last):
        ...
        TypeError: pyro.sample site 'z' was given the MixturePrior module itself, ...
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not torch.compiler.is_compiling():
            site = _site_of_pyro_sample(sys._getframe(1))
            if site is not None:
                raise TypeError(uncalled_message(self, site))
        return super().__call__(*args, **kwargs)

    def log_prob(self, value: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Reached when a site given the module uncalled was replayed or observed (its fn
        was never called); a ValueError, which Pyro's traces re-raise naming the site."""
        raise ValueError(uncalled_message(self, site_holding(self)))

    def sample(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Reached when a Pyro handler draws from a site's fn (``init_to_sample`` in
        ``Predictive`` and autoguides); a TypeError, which their fallbacks do not catch."""
        raise TypeError(uncalled_message(self, site_holding(self)))


def refuse_as_scored_site(module: torch.nn.Module) -> None:
    """For a prior module with a ``log_prob`` of its own (a :class:`Flow`, which is also a
    density model): refuse being scored as an uncalled site's fn by a Pyro trace, as the
    other prior modules are. A code-object check on the caller, cheap on every call."""
    frame = sys._getframe(2)
    if frame is not None and frame.f_code is _SCORE_CODE:
        site = frame.f_locals.get("site")
        if isinstance(site, dict) and site.get("fn") is module:
            raise ValueError(uncalled_message(module, str(site.get("name"))))


def site_holding(module: torch.nn.Module, depth: int = 12) -> str | None:
    """The name of the sample site whose fn is ``module``, from the message or site dict
    of the Pyro frame that is using it (only on the error path)."""
    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            break
        for key in ("msg", "site"):
            held = frame.f_locals.get(key)
            if isinstance(held, dict) and held.get("fn") is module:
                return str(held.get("name"))
        frame = frame.f_back
    return None
