"""A user's model/guide pair as ``fit`` and the evaluation helpers take it.

``model`` may be a pyro_gen module (its ``model`` and ``guide`` methods are used) or any Pyro
model callable; ``guide=`` replaces the module's guide with any Pyro guide (a function, a
pyro_gen amortized guide, a Pyro autoguide, an ``AutoGuideList``). One warm-up trace of the
pair, before training, builds lazily created guides (so a checkpoint can be restored into
them) and catches mistakes that Pyro would only warn about or let pass silently.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.util
import torch
from pyro import poutine
from pyro.infer import TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.params.param_store import _MODULE_NAMESPACE_DIVIDER
from pyro.poutine.subsample_messenger import _Subsample

from pyro_gen.data.batching import Call, describe
from pyro_gen.infer.pyro_modules import MODULE_KEY, called_modules, registered_names
from pyro_gen.infer.undo_writes import UndoWrites


@dataclass(frozen=True)
class Program:
    """The callables SVI runs, and the modules whose state a checkpoint keeps.

    Attributes:
        model: the Pyro model callable.
        guide: the Pyro guide callable.
        modules: ``{"model": ..., "guide": ..., "loss": ...}`` for those that are
            ``torch.nn.Module`` s (their buffers, e.g. ActNorm's or an EMA, are state that
            the param store does not hold).
    """

    model: Callable[..., Any]
    guide: Callable[..., Any]
    modules: dict[str, torch.nn.Module]
    signatures: dict[str, inspect.Signature] = field(default_factory=dict, compare=False)
    # The objective, when given: which model sites a guide may leave out depends on it.
    loss: Any = field(default=None, compare=False)
    # Argument layouts (positional count, keyword names) already found to fit: binding
    # the signatures again for every batch costs more than some small models' step.
    _fitting: set[tuple[int, tuple[str, ...]]] = field(default_factory=set, compare=False)

    def check_call(self, call: Call, index: int) -> None:
        """Raises a clear error when batch ``index`` does not fit the model's or the guide's
        signature (a batch iterator that yields other arguments than the first batch did).
        Optional arguments may come and go, as labels do in semi-supervised batches."""
        layout = (len(call.args), tuple(sorted(call.kwargs)))
        if layout in self._fitting:
            return
        for role, signature in self.signatures.items():
            try:
                signature.bind(*call.args, **call.kwargs)
            except TypeError as e:
                raise ValueError(
                    f"batch {index} of data has {describe(call)} arguments, which the {role} "
                    f"{signature} does not take ({e}): every batch must fit its signature"
                ) from None
        self._fitting.add(layout)


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


def program(model: Any, guide: Any = None, loss: Any = None) -> Program:
    """Resolves ``model`` (a module with ``model``/``guide`` methods, or a Pyro model callable)
    and an optional replacement ``guide`` into the pair SVI runs.

    Example:
        >>> def model(x): pass
        >>> def guide(x): pass
        >>> program(model, guide).modules
        {}
    """
    if isinstance(model, torch.nn.Module) and callable(getattr(model, "model", None)):
        model_fn = model.model
        if guide is None:
            guide = getattr(model, "guide", None)
            if not callable(guide):
                raise TypeError(
                    f"{type(model).__name__} has a model but no guide: pass guide= "
                    "(a Pyro guide callable, e.g. an autoguide)"
                )
    elif callable(model):
        model_fn = model
        if guide is None:
            raise TypeError(
                "model is a plain callable: pass guide= too (a Pyro guide, or "
                "`lambda *args, **kwargs: None` for a model without latent sites)"
            )
    else:
        raise TypeError(
            f"model must be a Pyro model callable or a module with model/guide methods, got "
            f"{type(model).__name__}"
        )
    if not callable(guide):
        raise TypeError(f"guide must be a Pyro guide callable, got {type(guide).__name__}")
    modules = {
        name: obj
        for name, obj in (("model", model), ("guide", guide), ("loss", loss))
        if isinstance(obj, torch.nn.Module) and not (name == "guide" and obj is model)
    }
    signatures = {}
    for role, fn in (("model", model_fn), ("guide", guide)):
        # a builtin or C callable has no signature to check against
        with contextlib.suppress(TypeError, ValueError):
            signatures[role] = inspect.signature(fn)
    return Program(model_fn, guide, modules, signatures, loss=loss)


def _latent_sites(trace: poutine.Trace) -> dict[str, dict[str, Any]]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site["infer"].get("is_auxiliary")
        and not isinstance(site["fn"], _Subsample)
    }


def _check_sites(model_trace: poutine.Trace, guide_trace: poutine.Trace, loss: Any = None) -> None:
    model_sites, guide_sites = _latent_sites(model_trace), _latent_sites(guide_trace)
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


def _check_params(*traces: poutine.Trace) -> None:
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


def trace_once(prog: Program, call: Call) -> tuple[poutine.Trace, poutine.Trace]:
    """The guide's and the model's traces of one run on ``call``, as SVI's would be, leaving
    no trace behind: the RNG is restored, ``prog.modules`` run in eval mode (no data-dependent
    initialisation, no running statistics) and other tensors' buffer writes are undone.
    Modules that a plain model or guide function registers with ``pyro.module`` join
    ``prog.modules`` (as ``"pyro.module:<name>"``), so that checkpoints keep their buffers
    and evaluation switches their mode.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_gen.data.batching import batch_calls
        >>> pyro.clear_param_store()
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
        >>> def model(x):
        ...     pyro.module("net", net)
        ...     pyro.sample("x", dist.Normal(net(x), 1.0).to_event(2), obs=x)
        >>> prog = program(model, lambda x: None)
        >>> _ = trace_once(prog, batch_calls(torch.randn(8, 3), 8, shuffle=False).peek())
        >>> list(prog.modules), int(net[1].num_batches_tracked)
        (['pyro.module:net'], 0)
    """
    rng = pyro.util.get_rng_state()
    modes = {name: m.training for name, m in prog.modules.items()}
    for m in prog.modules.values():
        m.eval()
    try:
        with torch.no_grad(), UndoWrites(), called_modules() as called:
            guide_trace = poutine.trace(prog.guide).get_trace(*call.args, **call.kwargs)
            replayed = poutine.replay(prog.model, trace=guide_trace)
            model_trace = poutine.trace(replayed).get_trace(*call.args, **call.kwargs)
    finally:
        for name, m in prog.modules.items():
            m.train(modes[name])
        pyro.util.set_rng_state(rng)
    traces = [guide_trace, model_trace]
    for name, module in registered_names(called, traces, prog.modules.values()).items():
        prog.modules[MODULE_KEY + name] = module
    _check_plate_sizes(guide_trace, model_trace)
    return guide_trace, model_trace


class PlateSizeError(ValueError):
    """The guide's plate has another size than the model's plate of that name."""


def _check_plate_sizes(guide_trace: poutine.Trace, model_trace: poutine.Trace) -> None:
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
        raise PlateSizeError(
            f"the model's plate {name!r} has size {takes} on this batch, but the guide's plate "
            f"of that name has size {size} (the examples it was set up on): a guide with "
            "parameters per example (e.g. Pyro's AutoNormal over local latents) scores "
            f"batches of all {size} examples only. Pass batch_size={size}, use an amortized "
            "guide (pyro_gen.vae.AutoAmortizedNormal), or subsample in the model "
            f"(pyro.plate({name!r}, {size}, subsample_size=...))"
        )


def warm_up(prog: Program, call: Call, *, check_sites: bool) -> tuple[poutine.Trace, poutine.Trace]:
    """Runs guide then model once on ``call`` (:func:`trace_once`) and returns their traces.

    Lazily built guides (autoguides) create their parameters here, so a checkpoint can be
    restored into them. Raises a clear error for a stale param-store entry that would
    detach a module from what SVI trains and, with ``check_sites``, for guide and model
    sites that do not match.
    """
    store = pyro.get_param_store()
    held = set(store.keys())
    guide_trace, model_trace = trace_once(prog, call)
    try:
        _check_params(guide_trace, model_trace)
        if check_sites:
            _check_sites(model_trace, guide_trace, prog.loss)
    except ValueError:
        # A refused pair leaves the store as it found it: the names this run registered
        # would otherwise go into the next run's checkpoint, or meet a retry as stale.
        for name in set(store.keys()) - held:
            del store[name]
        raise
    return guide_trace, model_trace
