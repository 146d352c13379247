"""The ELBO of recorded Pyro traces without host read-backs, KL-annealing factors as
program inputs, and the structural signature that tells when a recording went stale."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceMeanField_ELBO,
    traceenum_elbo,
)
from pyro.infer.traceenum_elbo import _compute_dice_elbo
from pyro.infer.util import is_identically_zero
from pyro.poutine.messenger import _bound_partial
from torch.distributions import kl_divergence

from pyro_gen.infer.compiled_recording import _Unsupported

_TRACE_LOSSES = (Trace_ELBO, JitTrace_ELBO)
_MEAN_FIELD_LOSSES = (TraceMeanField_ELBO, JitTraceMeanField_ELBO)
# Parallel enumeration only: its traces and contraction are fixed by the input shapes, so
# one recording holds. Sequential enumeration reruns the model per value from a queue.
_ENUM_LOSSES = (TraceEnum_ELBO, JitTraceEnum_ELBO)


# ---------------------------------------------------------------------------------------
# KL-annealing wrappers: found in the handler chain, their beta becomes a program input.

#: The dtype of the beta inputs. Pyro multiplies a site's scale by beta as Python numbers
#: (double) and the log-density by the product, cast to its own dtype; a float32 beta would
#: round the product differently, so a compiled step would not be the plain step bit for bit
#: (a checkpoint resumed with an annealing schedule, whose first steps are plain, drifted).
BETA_DTYPE = torch.float64


def _kl_messengers(fn: Callable[..., Any]) -> list[Any]:
    try:
        from pyro_gen.infer.annealing import KLScaleMessenger
    except ImportError:  # pragma: no cover - annealing ships with the package
        return []
    found = []
    while True:
        if isinstance(fn, _bound_partial):
            fn = fn.func
        elif isinstance(fn, partial) and len(fn.args) >= 2:
            if isinstance(fn.args[0], KLScaleMessenger):
                found.append(fn.args[0])
            fn = fn.args[1]
        else:
            return found


@contextlib.contextmanager
def _bound_betas(messengers: Sequence[Any], values: Sequence[Any]) -> Iterator[None]:
    saved = [m.beta for m in messengers]
    try:
        for m, v in zip(messengers, values):
            m.beta = v
        yield
    finally:
        for m, v in zip(messengers, saved):
            m.beta = v


# ---------------------------------------------------------------------------------------
# The ELBO of recorded traces, without host read-backs (Pyro's own calls .item()).


def _elbo_particle(loss: ELBO, model_trace: Any, guide_trace: Any) -> torch.Tensor:
    elbo: Any = 0.0
    if isinstance(loss, _ENUM_LOSSES):
        return -_enumerated_elbo(model_trace, guide_trace)
    if isinstance(loss, _MEAN_FIELD_LOSSES):
        # Mirrors TraceMeanField_ELBO._differentiable_loss_particle.
        for name, msite in model_trace.nodes.items():
            if msite["type"] != "sample":
                continue
            if msite["is_observed"]:
                elbo = elbo + msite["log_prob_sum"]
                continue
            gsite = guide_trace.nodes[name]
            _require_reparam(name, gsite)
            try:
                kl = kl_divergence(gsite["fn"], msite["fn"])
            except NotImplementedError:
                elbo = elbo + msite["log_prob_sum"] - gsite["score_parts"].entropy_term.sum()
                continue
            kl = scale_and_mask(kl, scale=gsite["scale"], mask=gsite["mask"])
            if torch.is_tensor(kl):
                elbo = elbo - kl.sum()
            else:
                elbo = elbo - kl * torch.Size(gsite["fn"].batch_shape).numel()
        for name, gsite in guide_trace.nodes.items():
            if gsite["type"] == "sample" and name not in model_trace.nodes:
                _require_reparam(name, gsite)
                elbo = elbo - gsite["score_parts"].entropy_term.sum()
        return -elbo
    # Trace_ELBO: for reparameterized guides its surrogate equals the ELBO itself.
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            elbo = elbo + site["log_prob_sum"]
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample":
            _require_reparam(name, site)
            elbo = elbo - site["log_prob_sum"]
    return -elbo


def _enumerated_elbo(model_trace: Any, guide_trace: Any) -> Any:
    """``TraceEnum_ELBO``'s particle: enumerated sites summed out exactly (Pyro's own
    contraction, recorded as tensor operations), every other guide site reparameterized,
    so that the Dice surrogate's value and gradient are the ELBO's own."""
    for trace in (guide_trace, model_trace):
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            how = site["infer"].get("enumerate")
            if how == "sequential":
                raise _Unsupported(
                    f"site '{name}' is enumerated sequentially (the compiled step takes "
                    "parallel enumeration)"
                )
            if trace is guide_trace and how != "parallel":
                _require_reparam(name, site)
    with _scales_compared_by_identity():
        elbo = _compute_dice_elbo(model_trace, guide_trace)
    return 0.0 if is_identically_zero(elbo) else elbo


@contextlib.contextmanager
def _scales_compared_by_identity() -> Iterator[None]:
    """Pyro checks that the sites of one enumerated sum share a scale by reading each
    scale's value (``float(scale)``): a read-back of a KL-annealing factor, which is an
    input of the program and so reads as data-dependent control flow. A scale that is one
    tensor object for all of the sum's sites (the annealing wrappers give one product per
    scale) is shared without reading it; anything else is left to Pyro's check."""
    pyro_check = traceenum_elbo._get_common_scale

    def common_scale(scales: list[Any]) -> Any:
        first = scales[0] if scales else None
        if torch.is_tensor(first) and first.dim() == 0 and all(s is first for s in scales):
            return first
        return pyro_check(scales)

    traceenum_elbo._get_common_scale = common_scale
    try:
        yield
    finally:
        traceenum_elbo._get_common_scale = pyro_check


def _require_reparam(name: str, site: dict[str, Any]) -> None:
    if not is_identically_zero(site["score_parts"].score_function):
        raise _Unsupported(
            f"guide site '{name}' ({type(site['fn']).__name__}) is not reparameterizable"
        )


def _shape_sig(value: Any) -> Any:
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), str(value.dtype))
    if value is None or isinstance(value, bool):
        return value
    return float(value)


def _signature(model_trace: Any, guide_trace: Any) -> tuple:
    """Everything about the traces that the recorded program bakes in."""
    sig = []
    for tag, tr in (("guide", guide_trace), ("model", model_trace)):
        for name, site in tr.nodes.items():
            if site["type"] == "param":
                sig.append((tag, "param", name))
            elif site["type"] == "sample":
                fn = site["fn"]
                sig.append(
                    (
                        tag,
                        name,
                        site["is_observed"],
                        type(fn).__name__,
                        tuple(getattr(fn, "batch_shape", ())),
                        tuple(getattr(fn, "event_shape", ())),
                        _shape_sig(site["value"]),
                        _shape_sig(site["scale"]),
                        _shape_sig(site["mask"]),
                        tuple((f.name, f.dim, f.size) for f in site["cond_indep_stack"]),
                    )
                )
    return tuple(sig)


def _describe_change(old: tuple, new: tuple) -> str:
    old_sites = [s for particle in old for s in particle]
    new_sites = [s for particle in new for s in particle]

    def names(sites: list[tuple]) -> set[str]:
        return {_site_label(s) for s in sites}

    if names(old_sites) != names(new_sites):
        added = _some(sorted(names(new_sites) - names(old_sites)))
        removed = _some(sorted(names(old_sites) - names(new_sites)))
        return f"the site set changed (added {added}, removed {removed})"
    for a, b in zip(old_sites, new_sites):
        if a == b:
            continue
        if a[1] == "param" or b[1] == "param" or a[:2] != b[:2]:
            # Same sites, another order: e.g. a guide that builds itself on its first call.
            return f"the order of the sites changed ({_site_label(a)} became {_site_label(b)})"
        hint = ""
        if a[7] != b[7]:
            hint = (
                " (a scale that changes between steps: for KL annealing wrap model and "
                "guide with pyro_gen.infer.annealing.kl_scale, whose beta is an input)"
            )
        return f"{a[0]} site '{a[1]}' changed from {a[2:]} to {b[2:]}{hint}"
    return "the number of particles changed"


def _site_label(site: tuple) -> str:
    return f"{site[0]} {'param ' + site[2] if site[1] == 'param' else site[1]}"


def _some(names: list[str], limit: int = 5) -> str:
    """A list short enough for one log line (a sequence model may add hundreds of sites)."""
    if len(names) <= limit:
        return str(names)
    return f"{names[:limit]} and {len(names) - limit} more"
