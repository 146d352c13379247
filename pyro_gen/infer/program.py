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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.util
import torch
from pyro import poutine

from pyro_gen.data.batching import Call, describe
from pyro_gen.infer.evaluation_plate import find_data_plate
from pyro_gen.infer.module_modes import module_modes, restore_modes
from pyro_gen.infer.param_values import check_param_values, explain_param_values
from pyro_gen.infer.program_checks import (
    check_guide_observes_nothing,
    check_matching_sites,
    check_params,
    check_plate_sizes,
    refuse_classes,
)
from pyro_gen.infer.pyro_modules import MODULE_KEY, called_modules, registered_names
from pyro_gen.infer.tensor_mismatch import explain_mismatch
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
                    + _extra_positional_hint(call, signature)
                ) from None
        self._fitting.add(layout)


def _extra_positional_hint(call: Call, signature: inspect.Signature) -> str:
    """What to do when the batches carry more positional values than the program takes:
    the usual case is a DataLoader of ``(image, label)`` pairs fed to ``model(x)``, as in
    Pyro's VAE tutorial."""
    params = signature.parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return ""
    taken = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    if len(call.args) <= taken:
        return ""
    if taken == 0:  # slicing to batch[:0] would hand it nothing: the data were not for it
        return (
            ". It takes no data: give it the parameters the batches fill (a guide takes "
            "the model's arguments, e.g. def guide(x): ...), or, for a model without data "
            "(an unnormalized density), pass data=() to call it with none"
        )
    return (
        f". To leave out what it does not use (a DataLoader of (x, label) pairs for a "
        f"model(x)), pass a function returning the batches it takes: data=lambda: "
        f"(batch[:{taken}] for batch in loader) (batch[0] for one), or give it parameters "
        f"for the rest (y=None)"
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
    refuse_classes(model, guide)
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


@contextlib.contextmanager
def quiet_run(prog: Program) -> Iterator[None]:
    """A run of the pair that leaves no trace behind: the RNG is restored, ``prog.modules``
    run in eval mode (no data-dependent initialisation, no running statistics) and other
    tensors' buffer writes are undone."""
    rng = pyro.util.get_rng_state()
    modes = module_modes(prog.modules.values())
    for m in prog.modules.values():
        m.eval()
    try:
        with UndoWrites():
            yield
    finally:
        restore_modes(modes)
        pyro.util.set_rng_state(rng)


def traces_of(prog: Program, call: Call) -> tuple[poutine.Trace, poutine.Trace]:
    """The guide's trace on ``call``, then the model's replayed on it, as SVI's would be."""
    guide_trace = poutine.trace(prog.guide).get_trace(*call.args, **call.kwargs)
    replayed = poutine.replay(prog.model, trace=guide_trace)
    return guide_trace, poutine.trace(replayed).get_trace(*call.args, **call.kwargs)


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
    held = set(pyro.get_param_store().keys())
    try:
        with quiet_run(prog), torch.no_grad(), called_modules() as called:
            guide_trace, model_trace = traces_of(prog, call)
    except NotImplementedError as e:
        _explain_missing_forward(e, prog)
        raise
    except (RuntimeError, ValueError) as e:
        registered = set(pyro.get_param_store().keys()) - held
        explain_param_values(e, registered)
        if isinstance(e, RuntimeError):
            explain_mismatch(e, call, called)
        raise
    check_param_values(
        n for t in (guide_trace, model_trace) for n, s in t.nodes.items() if s["type"] == "param"
    )
    traces = [guide_trace, model_trace]
    for name, module in registered_names(called, traces, prog.modules.values()).items():
        prog.modules[MODULE_KEY + name] = module
    check_plate_sizes(guide_trace, model_trace)
    check_guide_observes_nothing(guide_trace, model_trace)
    return guide_trace, model_trace


def _explain_missing_forward(error: NotImplementedError, prog: Program) -> None:
    """Names the usual cause of torch's 'Module [VAE] is missing the required "forward"
    function' here: an autoguide built on a module whose model is its ``model`` method
    (``AutoNormal(vae)`` for ``AutoNormal(vae.model)``), which the guide then calls."""
    module = prog.modules.get("model")
    if (
        module is None
        or '"forward"' not in str(error)
        or type(module).forward is not torch.nn.Module.forward
    ):
        return
    guide, owner = type(prog.guide).__name__, type(module).__name__
    raise TypeError(
        f"the guide {guide} was built on the {owner} module, which has model and guide "
        f"methods but no forward to call: build it on the model method, e.g. "
        f"{guide}({owner.lower()}.model)"
    ) from error


def warm_up(
    prog: Program, call: Call, *, check_sites: bool, plate_name: str | None = None
) -> tuple[poutine.Trace, poutine.Trace]:
    """Runs guide then model once on ``call`` (:func:`trace_once`) and returns their traces.

    Lazily built guides (autoguides) create their parameters here, so a checkpoint can be
    restored into them. Raises a clear error for a stale param-store entry that would
    detach a module from what SVI trains, for a ``plate_name`` the model has no plate of
    and, with ``check_sites``, for guide and model sites that do not match.
    """
    store = pyro.get_param_store()
    held = set(store.keys())
    guide_trace, model_trace = trace_once(prog, call)
    try:
        check_params(guide_trace, model_trace)
        if plate_name is not None:  # a typo would turn the batch checks off unsaid
            find_data_plate(model_trace, plate_name)
        if check_sites:
            check_matching_sites(model_trace, guide_trace, prog.loss)
    except ValueError:
        # A refused pair leaves the store as it found it: the names this run registered
        # would otherwise go into the next run's checkpoint, or meet a retry as stale.
        for name in set(store.keys()) - held:
            del store[name]
        raise
    return guide_trace, model_trace
