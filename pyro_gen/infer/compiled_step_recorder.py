"""Recording a compiled SVI step for one input signature: the guide, the model, the ELBO and
its gradient (clipped, guarded, with the model's input checks) traced into one tensor
program with :func:`torch.fx.experimental.proxy_tensor.make_fx`, rewritten
(:mod:`~pyro_gen.infer.compiled_passes`, :mod:`~pyro_gen.infer.compiled_masks`,
:mod:`~pyro_gen.infer.compiled_check_placement`) and handed to a backend (a mixin of
:class:`~pyro_gen.infer.compiled.CompiledSVI`; the recording's own machinery is
:mod:`~pyro_gen.infer.compiled_recording`)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pyro
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from pyro_gen.infer.compiled_backends import compile_after, resolved_backend
from pyro_gen.infer.compiled_check_placement import check_where_made
from pyro_gen.infer.compiled_checks import failed_checks, probe_input_checks
from pyro_gen.infer.compiled_elbo import (
    BETA_DTYPE,
    _bound_betas,
    _describe_change,
    _elbo_particle,
    _signature,
)
from pyro_gen.infer.compiled_masks import fill_masked_assignments
from pyro_gen.infer.compiled_optim import guarded_loss, in_layout_of, non_finite
from pyro_gen.infer.compiled_passes import drop_unused, simplify
from pyro_gen.infer.compiled_recording import _GuardMode, _lift_inputs, _Program, _Unsupported
from pyro_gen.infer.cpu_memory import retain_freed_cpu_memory
from pyro_gen.infer.undo_writes import UndoWrites

logger = logging.getLogger("pyro_gen")


@contextlib.contextmanager
def _one_recompile(gm: torch.fx.GraphModule) -> Iterator[None]:
    """Runs graph passes that each end with ``gm.recompile()`` and regenerates ``gm``'s code
    once, after the last: each regeneration writes and compiles the whole program's Python
    (44 ms for a 2-D RealNVP's step under cProfile, five times a recording). The passes edit
    ``gm.graph`` only; none runs ``gm`` in between."""
    asked: list[bool] = []
    gm.recompile = lambda: asked.append(True)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del gm.recompile
        if asked:
            gm.recompile()


def _one_fake_mode() -> Any:
    """A tracing context whose one fake-tensor mode describes every recorded value.

    ``make_fx`` keeps each node's value as a fake tensor's metadata; with no fake mode in
    context it builds a new ``FakeTensorMode`` per value, and each one captures the whole
    Python stack (``traceback.extract_stack``), deep under Pyro's handlers: 2.8 s of a
    6-layer ResidualFlow's 12 s recording. Tracing stays real (``tracing_mode="real"``).
    """
    mode = FakeTensorMode(allow_fallback_kernels=True)
    return torch._guards.tracing(torch._guards.TracingContext(mode))


__all__ = ["StepRecorder"]


class StepRecorder:
    """Mixin of :class:`~pyro_gen.infer.compiled.CompiledSVI`: :meth:`_record`.

    Reads the step's ``loss``, ``grad_clip``, ``step_guard``, ``backend``,
    ``compile_after``, ``retain_cpu_memory``, ``_kl``, ``_updates``, ``_flag_on_device``
    and ``compile_time_s``, and calls ``_params_of``, ``_beta_values``, ``_traces``,
    ``_networks``, ``_quiet_rng``, ``_eager_signature``, ``_no_program_yet`` and
    ``_compile``.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_gen.infer.compiled import CompiledSVI
        >>> def model(x):
        ...     loc = pyro.param("loc", torch.zeros(1))
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("x", dist.Normal(loc, 1.0), obs=x)
        >>> svi = CompiledSVI(model, lambda x: None, backend="fx")
        >>> x = torch.zeros(4)
        >>> prog = svi._record((x,), {}, [x], svi._eager_signature((x,), {}))
        >>> [p is pyro.param("loc").unconstrained() for p in prog.grad_params]
        [True]
    """

    def _record(
        self,
        args: tuple,
        kwargs: dict,
        tensors: list[torch.Tensor],
        signature: tuple,
        compiled: bool | None = None,
    ) -> _Program:
        """Records the step for these inputs; ``signature`` is their eager run's.
        ``compiled``: whether to compile it now, as the run that wrote a restored checkpoint
        had (:mod:`~pyro_gen.infer.compiled_resume`); None decides as for a new program."""
        start = time.perf_counter()
        with self._quiet_rng(tensors):
            params = self._params_of(signature)
            device = tensors[0].device if tensors else torch.device("cpu")
            betas = [torch.tensor(b, dtype=BETA_DTYPE, device=device) for b in self._beta_values()]
            # The guard's check is part of the program, large gradients checked where they
            # are made (still in cache); a CUDA graph captures it with the rest. Who reads
            # the flag: on an accelerator the fused update, on the device; on the CPU, where
            # a read is free, the step, with the input checks' flag.
            in_program = self.step_guard
            on_device = (
                device.type != "cpu" if self._flag_on_device is None else self._flag_on_device
            )
            # made here, not while recording: the program raises them, as inputs
            raised = self._updates.raised_flags(device)
            flat, spec = pytree.tree_flatten((args, kwargs))
            slots = [i for i, v in enumerate(flat) if torch.is_tensor(v)]
            template = [None if torch.is_tensor(v) else v for v in flat]  # holds no batch

            def rebuild(data: Sequence[torch.Tensor]) -> tuple[tuple, dict]:
                leaves = list(template)
                for i, t in zip(slots, data):
                    leaves[i] = t
                return pytree.tree_unflatten(leaves, spec)

            n_p, n_d = len(params), len(tensors)
            seen: dict[str, Any] = {}
            probed, is_check = self._probe(args, kwargs, tensors)

            def program(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
                a, k = rebuild(inputs[n_p : n_p + n_d])
                loss: Any = 0.0
                sigs = []
                guard = _GuardMode()
                with _bound_betas(self._kl, inputs[n_p + n_d :]), guard, self._networks(a, k):
                    for model_trace, guide_trace in self._traces(a, k):
                        sigs.append(_signature(model_trace, guide_trace))
                        loss = loss + _elbo_particle(self.loss, model_trace, guide_trace)
                    loss = loss / self.loss.num_particles
                # Reads that the probe found to be input checks are compared on the device;
                # the others (control flow) are returned for the step to read. Reads that are
                # not the probe's (noise-dependent ones) are all taken as control flow.
                aligned = [v for _, v in guard.reads] == probed
                flags = is_check if aligned else [False] * len(guard.reads)
                checks = [r for r, c in zip(guard.reads, flags) if c]
                kept = [r for r, c in zip(guard.reads, flags) if not c]
                seen["guards"], seen["checked"] = [v for _, v in kept], bool(checks)
                if not torch.is_tensor(loss) or not loss.requires_grad:
                    raise _Unsupported("the loss does not depend on any parameter")
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                seen["sig"], seen["used"] = tuple(sigs), [g is not None for g in grads]
                grads = [in_layout_of(g, p) for g, p in zip(grads, params) if g is not None]
                if self.grad_clip is not None:
                    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
                    coef = (self.grad_clip / (torch.linalg.vector_norm(norms) + 1e-6)).clamp(
                        max=1.0
                    )
                    grads = [g * coef for g in grads]
                loss = loss.detach()
                flag: list[torch.Tensor] = []
                failed = [failed_checks(checks)] if checks else []
                if in_program and on_device:
                    loss, found = guarded_loss(loss, grads)
                    if failed:  # a failed check skips the update and marks the loss
                        found = torch.maximum(found, failed[0])
                        loss = torch.where(failed[0] > 0, math.nan, loss)
                    flag.append(found)
                elif in_program:  # read on the host: the flag alone, the step marks the loss
                    flag.append(non_finite([loss, *grads], raised, reset=False))
                return (loss, *grads, *flag, *failed, *(t for t, _ in kept))

            try:
                with (
                    pyro.validation_enabled(False),
                    torch.enable_grad(),
                    UndoWrites(),
                    _one_fake_mode(),
                ):
                    gm = make_fx(program)(*params, *tensors, *betas)
            except _Unsupported:
                raise
            except Exception as exc:
                msg = (str(exc) or type(exc).__name__).splitlines()[0]
                raise _Unsupported(f"recording failed: {msg}") from exc
            if seen["sig"] != signature:
                raise _Unsupported(
                    "the program's structure changed between two runs: "
                    + _describe_change(signature, seen["sig"])
                )
            with _one_recompile(gm):
                extras = _lift_inputs(gm)
                simplify(gm)
                fill_masked_assignments(gm)
                drop_unused(gm)
                if in_program and not on_device:  # read on the host: it re-checks the flag
                    check_where_made(gm)
        grad_params = [p for p, used in zip(params, seen["used"]) if used]
        prog = _Program(
            gm, gm, params, grad_params, extras, signature, seen["guards"], compiled=False,
            guarded=in_program, flag_on_device=in_program and on_device,
            checked=seen["checked"], rebuild=rebuild,
        )  # fmt: skip
        self._updates.register(params)
        if self.retain_cpu_memory and any(p.device.type == "cpu" for p in params):
            retain_freed_cpu_memory()
        if compiled is not None:  # as in the run that wrote the checkpoint
            now = compiled
        else:
            first = self._no_program_yet()
            now = compile_after(self.backend, self.compile_after, first=first) == 0
            if now and prog.guards and resolved_backend(self.backend) == "inductor":
                # Values read from the data steer this program (control flow): the next
                # batch may not take its path (ProdLDA's int(counts.max()) did not; Inductor
                # had spent 20 s on it), so it compiles once it has held for a while
                # (_program_for).
                now = False
        if now:
            prog.fn, prog.compiled = self._compile(prog, tensors), True
        elif self.backend == "auto":
            # TorchScript runs the recorded program without Python per op (2x faster for
            # small flows) and costs a fraction of a second; Inductor comes later.
            try:
                prog.fn = self._compile(prog, tensors, backend="jit")
            except Exception as exc:  # the plain recorded program still works
                logger.info("pyro_gen: TorchScript could not take the program (%s)", exc)
        self.compile_time_s += time.perf_counter() - start
        logger.info(
            "pyro_gen: recorded the ELBO step for a new input signature in %.1f s",
            time.perf_counter() - start,
        )
        return prog

    def _probe(
        self, args: tuple, kwargs: dict, tensors: Sequence[torch.Tensor]
    ) -> tuple[list[Any], list[bool]]:
        """The values the step reads from tensors, and which are input checks
        (:func:`~pyro_gen.infer.compiled_checks.probe_input_checks`), from eager runs
        without Pyro's validation, as the recording runs."""

        def run() -> None:
            with self._quiet_rng(tensors), pyro.validation_enabled(False):
                self._eager_signature(args, kwargs)

        return probe_input_checks(run)
