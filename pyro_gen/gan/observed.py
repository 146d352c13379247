"""The examples a Pyro model generates at its observed sites: the model run with its
observations removed (``poutine.uncondition``), as Pyro's ``EnergyDistance`` runs it, each
observed site holding a generated value beside the data it observes. What the adversarial
losses compare with the data, whether the run is Pyro's or a replay of its recording
(:mod:`pyro_gen.gan.recorded`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine

__all__ = ["ObservedSite", "observed_sites", "unconditioned_traces"]


@dataclasses.dataclass
class ObservedSite:
    """An observed site of a model run with its observations removed.

    Attributes:
        value: the generated value (differentiable in the model's parameters).
        obs: the data the site observes.
        event_dim: number of event dimensions of the site.
        scale: the site's scale (a plate's subsampling), a number or a tensor.
        mask: the site's mask, or ``None``.
        deterministic: whether the site is a ``pyro.deterministic`` site (not data).
        discrete: the name of the site's distribution when it has no reparameterized
            sampler (a Bernoulli: its generated value carries no gradient), else ``None``.
    """

    value: torch.Tensor
    obs: torch.Tensor
    event_dim: int
    scale: Any = 1.0
    mask: Any = None
    deterministic: bool = False
    discrete: str | None = None


def unconditioned_traces(
    model: Callable[..., Any], guide: Callable[..., Any], args: tuple, kwargs: dict
) -> tuple[poutine.Trace, poutine.Trace]:
    """The guide's trace and the model's, replayed against it with its observations removed:
    each observed site holds a generated value and keeps the data in
    ``site["infer"]["obs"]``.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> def model(x):
        ...     pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)
        >>> model_trace, _ = unconditioned_traces(model, lambda x: None, (torch.tensor(3.0),), {})
        >>> model_trace.nodes["x"]["infer"]["obs"]
        tensor(3.)
    """
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    # an empty guide (the Generator's) leaves nothing to replay: one handler fewer on each
    # of the model's sites
    replays = any(site["type"] == "sample" for site in guide_trace.nodes.values())
    run = poutine.replay(model, trace=guide_trace) if replays else model
    with poutine.trace() as tr, poutine.uncondition():
        run(*args, **kwargs)
    return tr.trace, guide_trace


def observed_sites(trace: poutine.Trace) -> dict[str, ObservedSite]:
    """The observed sites of an unconditioned model trace, in the order the model visits
    them.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> def model(x):
        ...     pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)
        >>> model_trace, _ = unconditioned_traces(model, lambda x: None, (torch.tensor(3.0),), {})
        >>> site = observed_sites(model_trace)["x"]
        >>> site.obs, site.event_dim, site.value.shape
        (tensor(3.), 0, torch.Size([]))
    """
    return {
        name: ObservedSite(
            site["value"],
            site["infer"]["obs"],
            site["fn"].event_dim,
            site["scale"],
            site["mask"],
            bool(site["infer"].get("_deterministic")),
            None if site["fn"].has_rsample else _base_name(site["fn"]),
        )
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["infer"].get("was_observed")
    }


def _base_name(fn: Any) -> str:
    """The name of the distribution under Pyro's wrappers (``Independent``, masks, expands)."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__
