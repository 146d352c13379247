"""Reading a model's trace for :class:`~pyro_gen.vae.autoguide.AutoAmortizedNormal`: its
latent sites (the ones the guide can cover) and the plate over data examples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.util
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to


def trace_latents(
    model: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    init_loc_fn: Callable[[dict], Any] | None = None,
) -> tuple[poutine.Trace, set[str], list[str], dict[str, Any]]:
    """Trace the latent sites; note the plates that draw random indices (which a guide
    can draw for the model to replay), the enumerated sites, left out here, and the indices
    each subsampled plate took (the examples the latents' values belong to). With
    ``init_loc_fn`` (a Pyro init strategy) the latent sites take its values, as in Pyro's
    autoguides; sites left out are not given to it.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> import torch
        >>> def model():
        ...     with pyro.plate("data", 10, subsample_size=4):
        ...         y = pyro.sample("y", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        ...         pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> trace, random_plates, enumerated, subsamples = trace_latents(model, (), {})
        >>> list(trace.stochastic_nodes), random_plates, enumerated, subsamples["data"].shape
        (['z'], {'data'}, ['y'], torch.Size([4]))
    """
    random_plates: set[str] = set()
    enumerated: list[str] = []

    def hide(msg: dict) -> bool:
        if site_is_subsample(msg):
            if msg["fn"].subsample_size is not None:
                random_plates.add(msg["name"])
            return True
        if msg["type"] != "sample" or msg["is_observed"]:
            return True
        if msg["infer"].get("enumerate"):
            enumerated.append(msg["name"])
            return True
        return False

    every_site = poutine.trace(model)  # inside the block: it records the plates' indices
    model = poutine.block(every_site, hide_fn=hide)
    if init_loc_fn is not None:  # outside the block, so that hidden sites are not given
        model = InitMessenger(init_loc_fn)(model)
        read_plate_indices = getattr(init_loc_fn, "read_plate_indices", None)
        if read_plate_indices is not None:  # a value of a plate's full size is indexed by them
            read_plate_indices(lambda name: _indices(every_site.msngr.trace, name))
    trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
    subsamples = {
        name: site["value"]
        for name, site in every_site.msngr.trace.nodes.items()
        if site_is_subsample(site)
    }
    for _, site in trace.iter_stochastic_nodes():
        # A plate without a size (pyro.plate("data"), as in Pyro's ss_vae example) takes
        # it from the sites' batch shape: record that size, which the plates made here
        # (and the search for the data plate) need.
        batch = site["fn"].batch_shape
        site["cond_indep_stack"] = tuple(
            f._replace(size=batch[f.dim], full_size=batch[f.dim])
            if f.size == -1 and f.dim is not None and -f.dim <= len(batch)
            else f
            for f in site["cond_indep_stack"]
        )
    return trace, random_plates, enumerated, subsamples


def random_plates_of(model: Callable[..., Any], args: tuple, kwargs: dict) -> set[str]:
    """The plates that draw their own random indices (``subsample_size=``) in a run of
    ``model``: an AutoGuideList draws those for its parts (Pyro's
    ``AutoGuide._create_plates``), whose blocked models (``poutine.block(model,
    expose=[...])``) hide the indices from them. The run leaves the RNG as it found it,
    and its trace is not recorded by an enclosing one.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     with pyro.plate("data", 100, subsample_size=10):
        ...         pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("all", 5):
        ...         pyro.sample("y", dist.Normal(0.0, 1.0))
        >>> random_plates_of(model, (), {})
        {'data'}
    """
    state = pyro.util.get_rng_state()
    try:
        trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
    finally:
        pyro.util.set_rng_state(state)
    return {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and site_is_subsample(site)
        and site["fn"].subsample_size is not None
    }


def _indices(trace: poutine.Trace, plate: str) -> Any:
    """The indices the plate ``plate`` took so far in the run ``trace`` records (None
    before it)."""
    site = trace.nodes.get(plate)
    return site["value"] if site is not None and site_is_subsample(site) else None


def check_latent_sites(trace: poutine.Trace) -> None:
    """Refuses, naming it, a latent site under a sequential plate, a discrete one (which
    the guide would have to leave out or enumerate, see :func:`discrete_site_error`) or one
    whose support no bijection reaches (see :func:`unreachable_support_error`)."""
    for name, site in trace.iter_stochastic_nodes():
        if any(not f.vectorized for f in site["cond_indep_stack"]):
            raise NotImplementedError(
                f"site {name!r} is under a sequential plate; use a vectorized pyro.plate"
            )
        if site["fn"].support.is_discrete:
            raise discrete_site_error(name, site, _masked_observe_of(name, site))
        try:
            biject_to(site["fn"].support)
        except NotImplementedError:
            raise unreachable_support_error(name, site) from None


def _masked_observe_of(name: str, site: dict) -> str | None:
    """The site ``name`` of ``pyro.sample(name, ..., obs_mask=...)`` when ``name`` looks like
    the ``<name>_unobserved`` part that Pyro splits off (masked by ``~obs_mask``; the latent
    trace read here holds neither ``<name>_observed`` nor the deterministic ``<name>``),
    else None."""
    suffix = "_unobserved"
    if name.endswith(suffix) and isinstance(site.get("mask"), torch.Tensor):
        return name[: -len(suffix)]
    return None


def discrete_site_error(name: str, site: dict, masked_from: str | None = None) -> ValueError:
    """The error for a discrete latent site the guide was asked to cover: it says how to
    enumerate the site or guide it by hand. For the unobserved part of an ``obs_mask=``
    site (``masked_from``) it says first that Pyro does not pass ``infer=`` on to that part
    (``pyro.sample(name, ..., obs_mask=m, infer={"enumerate": ...})`` leaves it
    unenumerated), since the advice to enumerate would otherwise read as already followed.

    Example:
        >>> import pyro.distributions as dist
        >>> import torch
        >>> site = {"fn": dist.Categorical(logits=torch.zeros(3))}
        >>> print(discrete_site_error("y_unobserved", site, "y"))  # doctest: +ELLIPSIS
        site 'y_unobserved' is the unobserved part of 'y' (if it has obs_mask=): Pyro ...
    """
    if masked_from is not None:
        return ValueError(
            f"site {name!r} is the unobserved part of {masked_from!r} (if it has obs_mask=): "
            f"Pyro splits such a site into {masked_from + '_observed'!r} and {name!r} without "
            f"passing its infer= on, so the entries it leaves "
            f"unobserved ({name!r}, {type(site['fn']).__name__}) are a discrete latent that "
            f"nothing enumerates, which AutoAmortizedNormal cannot guide: wrap the model in "
            f"pyro.infer.config_enumerate (which marks {name!r} too) and train with "
            f"TraceEnum_ELBO, or mask the labels yourself (poutine.mask(mask=...) around an "
            f"observed site, and an enumerated site for the unlabelled rows)."
        )
    return ValueError(
        f"AutoAmortizedNormal cannot guide the discrete site {name!r} "
        f"({type(site['fn']).__name__}, support {site['fn'].support}). Either enumerate it: "
        f"sample it with infer={{'enumerate': 'parallel'}} (or pyro.infer.config_enumerate) "
        f"and train with TraceEnum_ELBO, and this guide leaves it out; or guide it yourself: "
        f"build this guide on poutine.block(model, hide=[{name!r}]) and call it from a guide "
        f"function that also samples {name!r}, or append both to a "
        f"pyro.infer.autoguide.AutoGuideList (a hand-written part enters the list's plates, "
        f"guide_list.plates[...], rather than opening its own)."
    )


def unreachable_support_error(name: str, site: dict) -> ValueError:
    """The error for a continuous site whose support no bijection from real numbers reaches
    (a sphere): it names the site and the reparametrization that makes it guidable.

    Example:
        >>> import pyro.distributions as dist
        >>> import torch
        >>> site = {"fn": dist.ProjectedNormal(torch.zeros(3))}
        >>> print(unreachable_support_error("direction", site))  # doctest: +ELLIPSIS
        AutoAmortizedNormal cannot guide the site 'direction' ... ProjectedNormalReparam()}) ...
    """
    fn = site["fn"]
    hint = (
        f"reparametrize it, poutine.reparam(model, config={{{name!r}: "
        f"ProjectedNormalReparam()}}) (pyro.infer.reparam), and this guide covers its "
        f"auxiliary Normal site; or "
        if "sphere" in repr(fn.support).lower()
        else ""
    )
    return ValueError(
        f"AutoAmortizedNormal cannot guide the site {name!r} ({type(fn).__name__}, support "
        f"{fn.support}): no bijection from real numbers reaches that support. Either {hint}"
        f"guide it yourself: build this guide on poutine.block(model, hide=[{name!r}]) and "
        f"sample {name!r} in your own guide function or AutoGuideList part."
    )


def find_data_plate(
    trace: poutine.Trace,
    plate_name: str | None,
    has_inputs: Callable[[CondIndepStackFrame], bool],
    skipped_inputs: Callable[[set[int]], str] | None = None,
) -> CondIndepStackFrame:
    """The plate over data examples: ``plate_name``, or else the plate around the most latent
    sites among those for which ``has_inputs`` (the model has per-example inputs of its size);
    on a tie the outermost. Where there is none, ``skipped_inputs(plate sizes)`` ends the
    error (naming arguments of those sizes that were not taken as inputs).

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> def model():
        ...     with pyro.plate("data", 10, dim=-2):
        ...         pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         with pyro.plate("pixels", 3):
        ...             pyro.sample("u", dist.Normal(0.0, 1.0))
        >>> trace = trace_latents(model, (), {})[0]
        >>> find_data_plate(trace, None, lambda frame: frame.size == 10).name
        'data'
    """
    frames: dict[str, CondIndepStackFrame] = {}
    counts: dict[str, int] = {}
    for _, site in trace.iter_stochastic_nodes():
        for f in site["cond_indep_stack"]:
            frames[f.name] = f
            counts[f.name] = counts.get(f.name, 0) + 1
    described = ", ".join(
        f"{n!r} (size {f.full_size or f.size}"
        + (f", subsample {f.size})" if f.full_size not in (None, f.size) else ")")
        for n, f in frames.items()
    )
    if plate_name is not None:
        if plate_name not in frames:
            raise ValueError(
                f"no such plate {plate_name!r} around a latent site of the model; "
                f"its plates are: {described or 'none'}"
            )
        return frames[plate_name]
    candidates = [f for f in frames.values() if has_inputs(f)]
    if not candidates:
        sizes = {s for f in frames.values() for s in (f.size, f.full_size or f.size)}
        raise ValueError(
            "AutoAmortizedNormal found no plate over data examples: "
            + (
                f"no plate has the size of the examples to encode (the first dimension of a "
                f"floating-point tensor argument of the model, or the rows input_fn returns; "
                f"plates: {described}); pass plate_name= and input_fn="
                f"lambda *args, **kwargs: (batch, features) tensor"
                + (skipped_inputs(sizes) if skipped_inputs is not None else "")
                if frames
                else "the model has no latent site under a pyro.plate (no such plate); "
                "use pyro.infer.autoguide.AutoNormal for a model without local latents"
            )
        )
    # the plate around most latent sites; on a tie the outermost (rightmost dim)
    return max(candidates, key=lambda f: (counts[f.name], f.dim))


class _PlateOpened(Exception):
    """Carries a plate's sizes out of the model run that opened it."""


class _PlateProbe(Messenger):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def _pyro_sample(self, msg: dict) -> None:
        if site_is_subsample(msg) and msg["name"] == self.name:
            fn = msg["fn"]
            raise _PlateOpened(fn.size, fn.subsample_size or fn.size)


def plate_sizes(model: Callable[..., Any], args: tuple, kwargs: dict, name: str) -> tuple | None:
    """``(full size, subsample size)`` with which ``model`` opens plate ``name`` on these
    arguments (None if it does not), read by running the model only as far as that plate,
    hidden from any outer handler, and with the random state put back: a model that
    subsamples its own data takes the sizes of the data it is given, which a guide must
    follow when that data changes (a held-out set of another size).

    Example:
        >>> import pyro, torch
        >>> def model(x, batch_size=None):
        ...     with pyro.plate("docs", x.shape[0], subsample_size=batch_size):
        ...         pass
        >>> plate_sizes(model, (torch.zeros(32),), {"batch_size": 8}, "docs")
        (32, 8)
    """
    rng = pyro.util.get_rng_state()
    try:
        with poutine.block(), _PlateProbe(name):
            model(*args, **kwargs)
    except _PlateOpened as opened:
        return opened.args
    finally:
        pyro.util.set_rng_state(rng)
    return None
