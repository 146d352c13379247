"""The generated examples of a Pyro model's run, recorded once per input signature and replayed
as a tensor program: what the adversarial losses run every step.

An adversarial loss needs, each step, the examples a model generates at its observed sites:
the model run with its observations removed (``poutine.uncondition``), as Pyro's
``EnergyDistance`` runs it. Run as a Pyro program, a small generator spends most of that
run in Pyro's handlers (each parameter sent through ``pyro.module``, the plate, building and
validating its distributions), not in its network. :class:`RecordedRuns` does for that run
what :class:`~pyro_gen.infer.compiled.CompiledSVI` does for an ELBO: it records the run once
per input signature with :func:`~torch.fx.experimental.proxy_tensor.make_fx` as a pure
tensor program

.. math:: (\\theta, x, \\epsilon) \\mapsto \\big(G_\\theta(\\epsilon, x), \\ldots\\big),

the parameters :math:`\\theta`, the data :math:`x` and the standard-noise draws
:math:`\\epsilon` in, the observed sites' generated values out, and replays it with autograd
on, so the generator's gradients flow as before. The noise draws are lifted out of the
program (:mod:`pyro_gen.infer.compiled_recording`) and drawn at each replay with the same
random calls, in the same order, as Pyro makes them: with the same seed the replay generates
the same examples as the Pyro run. Each replay still announces the run's parameters as Pyro
param sites (``pyro.param``), because ``SVI`` and :func:`pyro_gen.infer.fit` find the
parameters to update in the param sites the loss's call records. This module decides when to
record, check, replay or run Pyro; :mod:`pyro_gen.gan.recorded_program` makes a recording
and :mod:`pyro_gen.gan.recorded_replay` replays it.

A new input signature is first run as Pyro (its sites noted), recorded at its second run (the
recording is that step's run), re-run as Pyro and compared on the ``check_steps`` steps that
follow and every ``check_every`` steps, and replayed otherwise. It falls back to Pyro for
good, saying why in one log line on the ``"pyro_gen"`` logger, when the model's sites change
between runs, when a random draw is not standard noise pushed through differentiable
operations (a Gamma, a discrete site whose probabilities are learned), when a value the model
branched on (``if x.max() > 1``, Pyro's argument checks) changes, when the shapes of the
inputs keep changing, or when recording fails. Calls made under any Pyro handler other than a
``param_only`` trace (which is what ``SVI`` and ``fit`` use) run as Pyro, so that the handler
sees the model's sites, and so do calls under ``torch.inference_mode()`` (Lightning's
``validate`` and ``test``), which cannot be recorded: they neither record nor count.

A replay takes the model's Python control flow as fixed, except where it depends on the
tensor values the model reads (compared at each replay), on the input shapes and non-tensor
arguments, or on the ``training`` flags of the modules of a model or guide that is a module's
method (these choose the recording). Buffers (batch norm's running statistics, a prior's
location) are read, and updated, through references taken when recording: after moving a
module to another device, call :meth:`RecordedRuns.clear` to record again. Python numbers
the model computes with (a closure's noise scale, a module's float attribute) are constants
of a recording: the checks compare the recording's values with the Pyro run's on the same
noise, so a changed number is caught at the next check, which falls back to Pyro; a schedule
that changes such a number should call :meth:`RecordedRuns.clear` after each change (or the
loss be built with ``record=False``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pyro
import torch
from torch import nn
from torch.utils import _pytree as pytree

from pyro_gen.gan.observed import ObservedSite, observed_sites, unconditioned_traces
from pyro_gen.gan.recorded_program import (
    BACKENDS,
    _Recording,
    compile_recording,
    finish_program,
    record_program,
)
from pyro_gen.gan.recorded_replay import (
    _NewParameters,
    differs,
    leaves_no_trace,
    only_param_capture,
    replay,
)
from pyro_gen.infer.compiled_elbo import _describe_change, _signature
from pyro_gen.infer.compiled_recording import (
    _Unsupported,
    noise_devices,
    noise_rng_state,
    set_noise_rng_state,
)

logger = logging.getLogger("pyro_gen")

__all__ = ["RecordedRuns"]


class RecordedRuns:
    """The observed sites of unconditioned runs of a model, replayed from a recording.

    Calling it runs ``model`` against ``guide`` with the observations removed and returns
    its observed sites (:class:`ObservedSite`), from a recorded tensor program where the
    model allows one and from Pyro otherwise (see the module's docstring).

    Args:
        backend: ``"auto"`` (TorchScript, falling back to the recorded fx program),
            ``"jit"``, ``"fx"``, ``"inductor"`` (torch.compile: minutes on a small CPU) or
            ``"pyro"`` (never record: every run through Pyro).
        check_steps: runs of a signature, after its recording, that run through Pyro and
            are compared with the recording.
        check_every: also run through Pyro and compare every this many runs (0: never).
        max_programs: more distinct input signatures (shapes, non-tensor arguments,
            modules' training flags) than this falls back to Pyro.

    Example:
        >>> from pyro_gen.gan import Generator
        >>> from pyro_gen.nn import MLPGenerator
        >>> gen = Generator(MLPGenerator(2, (2,), (8,)))
        >>> runs, x = RecordedRuns(), torch.zeros(4, 2)
        >>> values = [runs(gen.model, gen.guide, (x,), {})["x"].value for _ in range(5)]
        >>> runs.recorded, runs.fallback_reason, values[-1].shape
        (True, None, torch.Size([4, 2]))
    """

    def __init__(
        self,
        *,
        backend: str = "auto",
        check_steps: int = 2,
        check_every: int = 1000,
        max_programs: int = 8,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose one of {BACKENDS}")
        self.backend = backend
        self.check_steps, self.check_every = check_steps, check_every
        self.max_programs = max_programs
        self.fallback_reason: str | None = (
            "recording turned off (backend='pyro')" if backend == "pyro" else None
        )
        self.record_time_s = 0.0
        self.clear()

    def clear(self) -> None:
        """Forgets every recording (the next runs record again)."""
        self._programs: dict[Any, _Recording] = {}
        self._sightings: dict[Any, tuple[tuple, list[str]]] = {}
        self._calls = 0  # runs that looked for a recording
        self._modules: dict[int, tuple[nn.Module, list[nn.Module]]] = {}

    @property
    def recorded(self) -> bool:
        """Whether a recording exists and runs are not falling back to Pyro."""
        return bool(self._programs) and self.fallback_reason is None

    # A recording holds graphs and compiled functions: copies and pickles record again.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_programs={}, _sightings={}, _calls=0, _modules={})
        return state

    def __call__(
        self, model: Callable[..., Any], guide: Callable[..., Any], args: tuple, kwargs: dict
    ) -> dict[str, ObservedSite]:
        """The observed sites of one unconditioned run of ``model(*args, **kwargs)``."""
        if self.fallback_reason is not None or not only_param_capture():
            return self._pyro(model, guide, args, kwargs)
        if torch.is_inference_mode_enabled():
            # Lightning's validate and test run under inference mode, where make_fx cannot
            # record ("get value out of a tracing tensor ... _local_scalar_dense"): the
            # failed recording used to turn replays off for all later training. An
            # inference-mode run goes through Pyro and leaves the recordings as they are.
            return self._pyro(model, guide, args, kwargs)
        try:
            key, data = self._key(model, guide, args, kwargs)
        except _Unsupported as exc:
            return self._fall_back(str(exc), model, guide, args, kwargs)
        self._calls += 1
        prog = self._programs.get(key)
        if prog is None:
            if key in self._sightings:
                return self._record(key, model, guide, args, kwargs, data)
            # Training and held-out batches, their last partial batches, train and eval
            # modes: a few signatures. More means shapes that change from batch to batch; a
            # sighting is a plain run, so at most max_programs recordings are spent on them.
            if len(self._sightings) >= self.max_programs:
                return self._fall_back(
                    f"the inputs' shapes or arguments keep changing ({self.max_programs + 1} "
                    f"distinct input signatures in {self._calls} runs)",
                    model, guide, args, kwargs,
                )  # fmt: skip
            sites, signature, names = self._pyro_signature(model, guide, args, kwargs)
            self._sightings[key] = (signature, names)
            return sites
        prog.calls += 1
        due = prog.calls <= self.check_steps or (
            self.check_every > 0 and prog.calls % self.check_every == 0
        )
        if due:
            # The check is this step's run, beside a replay on the same noise: a Python
            # number the model reads (a closure's noise scale changed by an annealing
            # schedule) is a constant of the recording, seen only by comparing values.
            replayed = self._check_replay(prog, data)
            sites, signature, _ = self._pyro_signature(model, guide, args, kwargs)
            if signature != prog.signature:
                self.fallback_reason = (
                    "the model's structure changed between runs: "
                    + _describe_change((prog.signature,), (signature,))
                )
                logger.warning(_LOG, self.fallback_reason)
            elif replayed is not None and (name := differs(replayed, sites)) is not None:
                self.fallback_reason = (
                    f"the recording no longer reproduces the model's site {name!r} on the "
                    "same noise (a Python number the model reads, such as a closure's "
                    "scale, changed since it was recorded)"
                )
                logger.warning(_LOG, self.fallback_reason)
            return sites
        sites = self._replay(prog, data)
        return sites if sites is not None else self._pyro(model, guide, args, kwargs)

    # -- Pyro runs ------------------------------------------------------------------------

    @staticmethod
    def _pyro(model: Callable[..., Any], guide: Callable[..., Any], args: tuple, kwargs: dict):
        return observed_sites(unconditioned_traces(model, guide, args, kwargs)[0])

    @staticmethod
    def _pyro_signature(
        model: Callable[..., Any], guide: Callable[..., Any], args: tuple, kwargs: dict
    ) -> tuple[dict[str, ObservedSite], tuple, list[str]]:
        model_trace, guide_trace = unconditioned_traces(model, guide, args, kwargs)
        names = [
            name
            for tr in (guide_trace, model_trace)
            for name, site in tr.nodes.items()
            if site["type"] == "param"
        ]
        return observed_sites(model_trace), _signature(model_trace, guide_trace), names

    def _fall_back(self, reason: str, model, guide, args, kwargs) -> dict[str, ObservedSite]:  # noqa: ANN001
        self.fallback_reason = reason
        logger.warning(_LOG, reason)
        return self._pyro(model, guide, args, kwargs)

    # -- recording ------------------------------------------------------------------------

    def _key(
        self, model: Callable[..., Any], guide: Callable[..., Any], args: tuple, kwargs: dict
    ) -> tuple[Any, list[torch.Tensor]]:
        leaves = (*args, *kwargs.values())
        if all(v is None or torch.is_tensor(v) for v in leaves):
            # the usual call (tensors and Nones): pytree's order, without its cost
            spec: Any = (len(args), tuple(kwargs))
            data = [v for v in leaves if v is not None]
            statics: tuple = tuple(v is None for v in leaves)
        else:
            flat, spec = pytree.tree_flatten((args, kwargs))
            data = [v for v in flat if torch.is_tensor(v)]
            statics = tuple(None if torch.is_tensor(v) else v for v in flat)
        shapes = tuple((t.shape, t.dtype, t.device, t.requires_grad) for t in data)
        flags = (self._training(model), self._training(guide))
        key = (model, guide, spec, shapes, statics, flags)
        try:
            hash(key)
        except TypeError as exc:
            raise _Unsupported(f"a non-tensor argument is not hashable ({exc})") from exc
        return key, data

    def _training(self, fn: Callable[..., Any]) -> tuple[bool, ...] | None:
        """The ``training`` flags of the modules of a model or guide that is a module's
        method (batch norm, an averaged generator in eval mode run other programs)."""
        owner = getattr(fn, "__self__", None)
        if not isinstance(owner, nn.Module):
            return None
        found = self._modules.get(id(owner))
        if found is None or found[0] is not owner:
            found = self._modules[id(owner)] = (owner, list(owner.modules()))
        return tuple(m.training for m in found[1])

    def _record(
        self,
        key: Any,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        args: tuple,
        kwargs: dict,
        data: list[torch.Tensor],
    ) -> dict[str, ObservedSite]:
        """Records the run on these inputs; the recording's run is this step's run."""
        start = time.perf_counter()
        signature, names = self._sightings[key]
        store = pyro.get_param_store()
        params = [store._params[n] for n in names]
        devices = noise_devices(data)
        rng = noise_rng_state(devices)
        try:
            gm, seen = record_program(model, guide, args, kwargs, params, data)
        except Exception as exc:  # noqa: BLE001 - the run goes on through Pyro
            # Pyro's run then draws what the failed recording drew.
            set_noise_rng_state(rng, devices)
            msg = (str(exc) or type(exc).__name__).splitlines()[0]
            return self._fall_back(
                f"recording failed ({type(exc).__name__}: {msg})", model, guide, args, kwargs
            )
        sites = seen["sites"]  # a complete Pyro run, whatever happens to its recording
        try:
            if seen["signature"] != signature:
                raise _Unsupported(
                    "the model's structure changed between runs: "
                    + _describe_change((signature,), (seen["signature"],))
                )
            extras, guards = finish_program(gm, seen)
            fn = compile_recording(gm, self.backend, params, data, extras, devices)
        except _Unsupported as exc:
            self.fallback_reason = str(exc)
            logger.warning(_LOG, exc)
            return sites
        self._programs[key] = _Recording(
            fn, names, params, extras, seen["layout"], signature, guards, seen["n_out"], devices
        )
        self.record_time_s += time.perf_counter() - start
        logger.info(
            "pyro_gen: recorded the model's run for a new input signature in %.2f s",
            time.perf_counter() - start,
        )
        return sites

    # -- replay ---------------------------------------------------------------------------

    def _check_replay(
        self, prog: _Recording, data: list[torch.Tensor]
    ) -> dict[str, ObservedSite] | None:
        """A replay that leaves no trace (see :func:`leaves_no_trace`)."""
        with leaves_no_trace(prog), torch.no_grad():
            return self._replay(prog, data)

    def _replay(self, prog: _Recording, data: list[torch.Tensor]) -> dict[str, ObservedSite] | None:
        """The sites from the recording, or None when this run must go through Pyro (the
        param store's tensors changed, or a value the model branched on did)."""
        try:
            return replay(prog, data)
        except _NewParameters:
            self.clear()  # new parameter tensors (a loaded param store): record again
        except _Unsupported as exc:
            self.fallback_reason = str(exc)
            logger.warning(_LOG, self.fallback_reason)
        return None


_LOG = "pyro_gen: the model's recorded run is off, running it through Pyro: %s"
