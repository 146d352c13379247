r"""Which scored densities depend on the model latents that evaluation draws from the model.

A latent :math:`s` that the guide does not sample is drawn by evaluation from its
conditional :math:`p(s \mid \mathrm{pa}(s))`, which cancels from the importance weight.
What remains is exact for :math:`s` unless some *scored* density (an observed site, or a
latent the guide samples) depends on :math:`s`, directly or through other drawn latents:
then the weight misses :math:`s`'s posterior and the bound is looser. A leaf (obs_mask's
``x_unobserved``) costs nothing. Dependencies are Pyro's own
(:func:`pyro.infer.inspect.get_dependencies`: the model run once with tensor provenance).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pyro.infer.inspect import get_dependencies

__all__ = ["describe", "scored_dependents"]


def scored_dependents(
    model: Callable, args: tuple, kwargs: dict, drawn: Iterable[str]
) -> dict[str, list[str]] | None:
    """For each drawn site, the scored sites whose densities depend on it (through drawn
    sites too), sorted; empty for a leaf. None when the model cannot be run with
    provenance tracking (then nothing is known).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         u = pyro.sample("u", dist.Normal(z, 1.0))
        ...         pyro.sample("leaf", dist.Normal(z, 1.0))
        ...         pyro.sample("x", dist.Normal(u, 1.0), obs=x)
        >>> scored_dependents(model, (torch.zeros(3),), {}, ["u", "leaf"])
        {'u': ['x'], 'leaf': []}
    """
    drawn = list(drawn)
    try:
        upstream = get_dependencies(model, args, kwargs)["prior_dependencies"]
    except Exception:  # noqa: BLE001 - the caller then says what it knows without it
        return None
    children: dict[str, set[str]] = {}
    for site, parents in upstream.items():
        for parent in parents:
            if parent != site:
                children.setdefault(parent, set()).add(site)
    unscored = set(drawn)
    out = {}
    for site in drawn:
        seen, todo, scored = {site}, [site], set()
        while todo:
            for child in children.get(todo.pop(), ()):
                if child in seen:
                    continue
                seen.add(child)
                if child in unscored:
                    todo.append(child)  # drawn too: its dependents see this site through it
                else:
                    scored.add(child)
        out[site] = sorted(scored)
    return out


def describe(dependents: dict[str, list[str]]) -> str:
    """Who depends on which drawn site.

    Example:
        >>> describe({"u": ["x"], "v": ["x", "y"]})
        "'x' on 'u'; 'x', 'y' on 'v'"
    """
    parts = [", ".join(map(repr, kids)) + f" on {site!r}" for site, kids in dependents.items()]
    return "; ".join(parts)
