"""What a model/guide pair and the arguments given with it must satisfy before training.

Each check raises one error that names what was wrong and what to do, where Pyro would warn,
let it pass silently, or fail later naming neither the site nor the cause: a guide passed
where the data goes, a loss class not called, guide and model sites that do not match, a
stale param-store entry, a guide sized to other data than the batch. How ``fit``'s batches
meet the model's data plate is checked in :mod:`~pyro_gen.infer.batch_checks`.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from pyro import poutine
from pyro.infer import TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuide
from pyro.params.param_store import _MODULE_NAMESPACE_DIVIDER
from pyro.poutine.subsample_messenger import _Subsample

__all__ = [
    "PlateSizeError",
    "check_loss",
    "check_params",
    "check_plate_sizes",
    "check_guide_observes_nothing",
    "check_matching_sites",
    "refuse_callable_data",
    "refuse_classes",
]


def refuse_callable_data(data: Any) -> None:
    """Refuses a guide where the data goes (Pyro's order is ``SVI(model, guide, ...)``).

    Data may be a function of no arguments that returns an iterator of batches (called each
    epoch); a module, or a function that needs arguments (a guide takes the model's), is
    not one.

    Example:
        >>> def guide(x): pass
        >>> refuse_callable_data(guide)
        Traceback (most recent call last):
        ...
        TypeError: data is 'guide', a callable that takes arguments: ...; pass a guide as guide=
        >>> refuse_callable_data(lambda: iter([torch.zeros(2)]))  # a batch function: data
    """
    if not callable(data) or torch.is_tensor(data):
        return
    if not isinstance(data, torch.nn.Module):
        try:
            inspect.signature(data).bind()
            return  # callable with no arguments: a batch function
        except TypeError:
            pass
        except ValueError:  # no signature to read (a builtin): let the data layer judge
            return
    name = getattr(data, "__name__", type(data).__name__)
    raise TypeError(
        f"data is {name!r}, a {'module' if isinstance(data, torch.nn.Module) else 'callable'} "
        "that takes arguments: the second argument is the data (a tensor, a dict or tuple "
        "of tensors, an iterable of batches, or a function of no arguments returning one); "
        "pass a guide as guide="
    )


def refuse_classes(model: Any, guide: Any) -> None:
    """Refuses a class given as the model or the guide: callable, so Pyro's SVI calls it with
    the batch, which builds an object and samples nothing. ``guide=AutoNormal`` for
    ``AutoNormal(model)`` then trained nothing, or was scored with every latent drawn
    from the prior.

    Example:
        >>> from pyro.infer.autoguide import AutoNormal
        >>> refuse_classes(lambda x: None, AutoNormal)
        Traceback (most recent call last):
        ...
        TypeError: guide is the class AutoNormal, not a guide built on the model: pass ...
    """
    if isinstance(guide, type):
        if issubclass(guide, AutoGuide):
            raise TypeError(
                f"guide is the class {guide.__name__}, not a guide built on the model: pass "
                f"guide={guide.__name__}(model)"
            )
        raise TypeError(
            f"guide is the class {guide.__name__}, not a guide: pass an instance "
            f"({guide.__name__}(...)) or a guide function"
        )
    if isinstance(model, type):
        raise TypeError(
            f"model is the class {model.__name__}, not a model: pass an instance "
            f"({model.__name__}(...)), whose model and guide methods are used, or a Pyro "
            "model function"
        )


def check_guide_observes_nothing(guide_trace: poutine.Trace, model_trace: poutine.Trace) -> None:
    """Refuses a guide with observed sites the model does not have: model and guide passed
    the other way round. Pyro's SVI trains such a pair (the guide's observation enters the
    ELBO as a density of q, unmatched) with a warning of "non-auxiliary vars in guide but
    not model"; with a guide that samples the model's latents too, the loss was exactly 0."""
    observed = sorted(
        name
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample"
        and site["is_observed"]
        and not site["infer"].get("is_auxiliary")
        and name not in model_trace.nodes
    )
    if observed:
        raise ValueError(
            f"the guide observes {observed} (obs=), which the model has no site for: a guide "
            "samples the model's latents and observes nothing. Are model and guide swapped? "
            "Pass fit(model, data, guide=guide), as Pyro's SVI(model, guide, ...)"
        )


def check_loss(loss: Any) -> None:
    """Refuses what is not a Pyro loss: an ELBO (an object with ``loss_and_grads``) or a
    callable ``loss(model, guide, *args)``; a loss class not yet called is named as such.

    Example:
        >>> from pyro.infer import Trace_ELBO
        >>> check_loss(Trace_ELBO())
        >>> check_loss(Trace_ELBO)
        Traceback (most recent call last):
        ...
        TypeError: loss is the class Trace_ELBO, not called: pass Trace_ELBO() (with its ...)
    """
    if isinstance(loss, type):  # callable, but calling it makes a loss rather than computing one
        raise TypeError(
            f"loss is the class {loss.__name__}, not called: pass {loss.__name__}() (with its "
            "arguments, e.g. num_particles=)"
        )
    if not (hasattr(loss, "loss_and_grads") or callable(loss)):
        raise TypeError(
            f"loss must be a Pyro loss (an ELBO, an object with loss_and_grads, or a callable "
            f"loss(model, guide, *args)), got {type(loss).__name__}"
        )


def latent_sites(trace: poutine.Trace) -> dict[str, dict[str, Any]]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site["infer"].get("is_auxiliary")
        and not isinstance(site["fn"], _Subsample)
    }


def check_matching_sites(
    model_trace: poutine.Trace, guide_trace: poutine.Trace, loss: Any = None
) -> None:
    """Refuses guide sites the model lacks or observes, and model latents the guide lacks
    (unless marked for enumeration by a ``loss`` that enumerates)."""
    model_sites, guide_sites = latent_sites(model_trace), latent_sites(guide_trace)
    _check_enumerated(model_sites, guide_sites, loss)
    unguided = sorted(
        n
        for n, site in model_sites.items()
        if n not in guide_sites and site["infer"].get("enumerate") is None
    )
    extra = sorted(set(guide_sites) - set(model_trace.nodes))
    if extra:
        hint = f"; the model's unguided latent sites are {unguided}" if unguided else ""
        raise ValueError(
            f"the guide samples {extra}, which the model has no site for{hint}: guide and "
            "model must use the same site names (a typo?)"
        )
    observed = sorted(n for n in guide_sites if model_trace.nodes[n].get("is_observed"))
    if observed:
        raise ValueError(
            f"the guide samples {observed}, which the model observes: a guide samples only "
            "the model's latent sites"
        )
    if unguided:
        raise ValueError(
            f"the model's latent sites {unguided} have no counterpart in the guide: sample them "
            "in the guide, or (for discrete sites) mark them infer={'enumerate': 'parallel'} "
            "and train with TraceEnum_ELBO"
        )


def _check_enumerated(
    model_sites: dict[str, dict[str, Any]], guide_sites: dict[str, dict[str, Any]], loss: Any
) -> None:
    """A site marked for enumeration may stay out of the guide, for TraceEnum_ELBO to sum
    out (Trace_ELBO and RenyiELBO draw it from the model instead). TraceMeanField_ELBO and
    TraceGraph_ELBO pair every model latent with a guide site and fail on the first step with
    Pyro's bare ``KeyError: 'y'``; name the sites and the loss before training instead."""
    if not isinstance(loss, (TraceMeanField_ELBO, TraceGraph_ELBO)):
        return
    marked = sorted(
        n
        for n, site in model_sites.items()
        if n not in guide_sites and site["infer"].get("enumerate") is not None
    )
    if marked:
        raise ValueError(
            f"the model's latent sites {marked} are marked for enumeration and not in the "
            f"guide, but {type(loss).__name__} does not enumerate: it needs a guide site for "
            "every latent. Train with TraceEnum_ELBO (or JitTraceEnum_ELBO) to sum them out, "
            "or sample them in the guide"
        )


def check_params(*traces: poutine.Trace) -> None:
    # The first module to register a name during this run owns the store entry; a later
    # module registered under the same name (Pyro's CEVAE: its Model and Guide PyroModules
    # both name a child ``t_nn``) gets that tensor back from ``pyro.module``, which Pyro's
    # SVI trains while the later module's own parameter stays at its initial value.
    first: dict[str, tuple[torch.Tensor, str]] = {}
    for trace, role in zip(traces, ("guide", "model")):
        for name, site in trace.nodes.items():
            if site["type"] != "param" or _MODULE_NAMESPACE_DIVIDER not in name:
                continue
            given = site["args"][1] if len(site["args"]) > 1 else None
            if not isinstance(given, torch.nn.Parameter):
                continue
            owner = name.split(_MODULE_NAMESPACE_DIVIDER)[0]
            if site["value"] is not given and name in first and site["value"] is first[name][0]:
                raise ValueError(
                    f"two different modules are registered under the name {owner!r} (in the "
                    f"{first[name][1]} and in the {role}): {name!r} would be the first one's "
                    "tensor for both, so Pyro's SVI trains it and leaves the other module's "
                    "parameter at its initial value. Give them distinct names: another "
                    "pyro.module name, or, for PyroModules whose plain nn.Module children "
                    "share an attribute name (CEVAE's Model.t_nn and Guide.t_nn), make model "
                    "and guide children of one PyroModule so that each name is prefixed "
                    "('model.t_nn', 'guide.t_nn')"
                )
            if site["value"] is not given:
                raise ValueError(
                    f"the Pyro param store already holds {name!r} (from an earlier model, or "
                    "a store loaded with pyro.get_param_store().load), so training would "
                    "update that tensor and not your module's parameter. To start afresh, "
                    "call pyro.clear_param_store() first or pass fit(..., clear_params=True); "
                    "to continue from the stored values, call "
                    f"pyro.module({owner!r}, <that module>, update_module_params=True) once "
                    "before fit (or resume with fit(..., checkpoint_dir=...))"
                )
            first.setdefault(name, (given, role))


class PlateSizeError(ValueError):
    """The guide's plate has another size than the model's plate of that name."""


def check_plate_sizes(guide_trace: poutine.Trace, model_trace: poutine.Trace) -> None:
    """Refuses a guide whose plate has another size than the model's plate of that name.

    A guide with one parameter per example (Pyro's ``AutoNormal`` over local latents) is
    sized to the data it first saw. On a batch of another size the model's plate replays
    the guide's indices (one per example the guide knows), and Pyro failed later, at a
    ``log_prob``, naming neither the guide nor the batch ("Value is not broadcastable ...
    torch.Size([500]) vs torch.Size([1000])").
    """
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or not isinstance(site["fn"], _Subsample):
            continue
        guide_fn = guide_trace.nodes.get(name, {}).get("fn")
        # The model's plate may take the guide's subsample (that is how a guide shares its
        # indices); what cannot hold is two sizes for one plate.
        if not isinstance(guide_fn, _Subsample) or guide_fn.size == site["fn"].size:
            continue
        takes, size = site["fn"].size, guide_fn.size
        if takes > size and site["fn"].subsample_size == size:
            # the model's plate was told the data set's size, the guide's the batch's
            raise PlateSizeError(
                f"the model's plate {name!r} has the data set's size {takes} (subsampling "
                f"{size}), but the guide's plate of that name has the batch's size {size}: "
                "Pyro would scale the model's local sites by N/B and the guide's by 1. Give "
                f"the guide's plate the same size, pyro.plate({name!r}, {takes}, "
                "subsample_size=len(batch))"
            )
        raise PlateSizeError(
            f"the model's plate {name!r} has size {takes} on this batch, but the guide's plate "
            f"of that name has size {size} (the examples it was set up on): a guide with "
            "parameters per example (e.g. Pyro's AutoNormal over local latents) scores "
            f"batches of all {size} examples only. Pass batch_size={size} (to fit, or to the "
            "DataLoader Lightning reads), use an amortized "
            "guide (pyro_gen.vae.AutoAmortizedNormal), or subsample in the model "
            f"(pyro.plate({name!r}, {size}, subsample_size=...))"
        )
