"""A compiled SVI step: the ELBO and its gradient as one tensor program per input shape.

Pyro runs a model and guide through a stack of Python effect handlers at every step.
For a model whose structure does not change between steps, that work only needs to be
done once. :class:`CompiledSVI` runs the guide and the model once per input signature,
records the resulting tensor program, including the backward pass, with
:func:`torch.fx.experimental.proxy_tensor.make_fx`, and then replays it as a pure function

.. math::

    (\\theta, x, \\epsilon, \\beta) \\mapsto
    \\big(-\\mathrm{ELBO}, \\nabla_\\theta(-\\mathrm{ELBO})\\big),

where :math:`\\epsilon` are the standard-noise draws of the reparameterized samplers,
lifted out of the program and drawn each step with the same random calls, in the same
order, as Pyro itself makes: with the same seed the compiled step sees the same draws as
``SVI`` + ``Trace_ELBO`` and gives the same loss and gradients. :math:`\\beta` are the KL
annealing factors of :func:`pyro_gen.infer.annealing.kl_scale` wrappers, read at each
step and passed in as inputs, so a changing schedule needs no recompilation. The program
is compiled (torch.compile / Inductor, with CUDA graphs on CUDA) and the update is a single
fused optimizer call, with no read-back of the loss to the host.

A new input signature first runs one plain Pyro step, and is recorded only when it comes
back, so that a model whose structure changes with the batch (sequences of varying length
with one site per time step) costs no recording at all: when the sites of two batches
with the same argument structure differ, the step falls back to plain Pyro SVI at once
(batches whose arguments differ in structure, such as the labelled and unlabelled batches of
a semi-supervised model, get a program each). It falls back too, saying why in one
log line on the ``"pyro_gen"`` logger, when the recorded program cannot stand for the
model (Python branching on tensor values, a sampler that is not standard noise pushed
through differentiable operations, an ELBO other than ``Trace_ELBO`` /
``TraceMeanField_ELBO`` / ``TraceEnum_ELBO`` with parallel enumeration, too many input
shapes) or when recording fails for any reason. With ``TraceEnum_ELBO`` the enumerated
sites are summed out by Pyro's own contraction, recorded as tensor operations.

A recording holds what the model and guide read besides parameters, inputs and annealing
factors as constants: a Python number such as an observation noise that a callback
anneals. After each recording, every ``check_every`` steps and when :meth:`~CompiledSVI.verify_next`
asks (``fit`` does after each epoch's callbacks), a step runs Pyro's model and guide on the
draws the program will take and compares the two losses before the update: a program that
went stale is recorded again, once; a value that keeps changing sends the step back to
plain Pyro SVI.

Every update is guarded as :class:`torch.amp.GradScaler` does: a loss or a gradient that is
NaN or infinite skips the update (parameters and optimizer state stay as they were) and
the step returns a non-finite loss, for the caller to report when it next reads losses
back. The check runs inside the program, each large gradient checked right after it is made
(:mod:`pyro_gen.infer.compiled_check_placement`). On an accelerator the fused update reads
the flag there, with no host synchronization; on the CPU the step reads it.

The model's own input checks (``if (x < 0).any(): raise ValueError(...)``), which a
recorded program would otherwise read back every step, are told apart from control flow
once per recording (:mod:`pyro_gen.infer.compiled_checks`) and run on the device: a batch
that fails one has its update skipped and a NaN loss, and :meth:`CompiledSVI.check` raises
the model's own error for it. A steady-state step on an accelerator thus reads nothing back
to the host (on the CPU it reads the guard's one flag, which there is no synchronization).
What still reads: values the model branches on, optimizers other than fused Adam/AdamW (one
flag), and the eager structural re-checks after a recording and every ``check_every`` steps
(``tests/infer/test_host_reads.py`` counts them).

This module holds the step's settings and its public protocol (:meth:`CompiledSVI.step`,
:meth:`~CompiledSVI.check`); the rest lives beside it, one concept per file, as mixins of
:class:`CompiledSVI`: which program a step's inputs get
(:mod:`~pyro_gen.infer.compiled_signatures`), recording it
(:mod:`~pyro_gen.infer.compiled_step_recorder`), compiling it
(:mod:`~pyro_gen.infer.compiled_compiler`), running and checking it
(:mod:`~pyro_gen.infer.compiled_runner`), Pyro's own run of the model and guide
(:mod:`~pyro_gen.infer.compiled_eager`), the plain Pyro step
(:mod:`~pyro_gen.infer.compiled_fallback`) and what a checkpoint keeps of the programs, for
a resumed run to take each step on the uninterrupted run's path
(:mod:`~pyro_gen.infer.compiled_resume`).

References:
    Paszke et al., PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode
    Transformation and Graph Compilation, ASPLOS 2024.
    Kingma & Welling, Auto-Encoding Variational Bayes, arXiv:1312.6114 (the
    reparameterized ELBO gradient).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.infer import (
    ELBO,
    Trace_ELBO,
)

from pyro_gen.infer.compiled_backends import BACKENDS
from pyro_gen.infer.compiled_checks import InputCheckError, first_failed
from pyro_gen.infer.compiled_compiler import ProgramCompiler
from pyro_gen.infer.compiled_eager import EagerRuns
from pyro_gen.infer.compiled_elbo import (
    _ENUM_LOSSES,
    _MEAN_FIELD_LOSSES,
    _TRACE_LOSSES,
    _kl_messengers,
)
from pyro_gen.infer.compiled_fallback import PlainFallback
from pyro_gen.infer.compiled_optim import OptimizerStateError
from pyro_gen.infer.compiled_precision import check_precision
from pyro_gen.infer.compiled_recording import _Program, _Unsupported
from pyro_gen.infer.compiled_resume import ResumableSteps
from pyro_gen.infer.compiled_runner import ProgramRunner, _StaleConstants
from pyro_gen.infer.compiled_signatures import SignaturePrograms
from pyro_gen.infer.compiled_step_recorder import StepRecorder
from pyro_gen.infer.compiled_update import GuardedUpdate
from pyro_gen.infer.loss_value import loss_name

logger = logging.getLogger("pyro_gen")

__all__ = ["CompiledSVI", "InputCheckError", "supports"]


def supports(loss: ELBO | None) -> bool:
    """Whether :class:`CompiledSVI` can compile this ELBO (else use plain Pyro SVI).

    Example:
        >>> supports(pyro.infer.Trace_ELBO()), supports(pyro.infer.TraceGraph_ELBO())
        (True, False)
        >>> supports(pyro.infer.JitTraceMeanField_ELBO())  # Pyro's draws: see the comment
        False
    """
    if loss is None:
        return True
    # Pyro 1.9's JitTraceMeanField_ELBO re-traces at every call (it tests the attribute
    # ``_loss_and_surrogate_loss`` but stores ``_differentiable_loss``) and so draws its noise
    # three times a step: the recorded step, which draws once, would not take Pyro's draws.
    # Pyro's own step keeps them (and TraceMeanField_ELBO, the same estimate, compiles).
    if type(loss) is pyro.infer.JitTraceMeanField_ELBO:
        return False
    return type(loss) in (*_TRACE_LOSSES, *_MEAN_FIELD_LOSSES, *_ENUM_LOSSES)


class CompiledSVI(
    SignaturePrograms,
    StepRecorder,
    ProgramCompiler,
    ProgramRunner,
    EagerRuns,
    PlainFallback,
    ResumableSteps,
):
    """SVI whose step runs the ELBO and its gradient as a compiled tensor program.

    A drop-in for ``pyro.infer.SVI(model, guide, optim, loss).step``: same Pyro param
    store, same optimizer object (its ``get_state``/``set_state`` keep working for
    checkpoints), same draws for the same seed. Models wrapped with
    :func:`pyro_gen.infer.annealing.kl_scale` keep their live schedule.

    Args:
        model: Pyro model; may be wrapped by ``kl_scale``.
        guide: Pyro guide (may be empty for flows); may be wrapped by ``kl_scale``.
        optim: a :class:`pyro.optim.PyroOptim`; default ``Adam({"lr": 1e-3})``.
            ``Adam``/``AdamW`` with a dict of arguments and no ``clip_args`` run as one
            fused torch optimizer; anything else steps through ``optim`` as SVI does.
        loss: ``Trace_ELBO``, ``TraceMeanField_ELBO``, ``TraceEnum_ELBO``, ``JitTrace_ELBO``
            or ``JitTraceEnum_ELBO``; other losses (``JitTraceMeanField_ELBO`` among them,
            see :func:`supports`) fall back to plain Pyro.
        grad_clip: if given, the global gradient norm is clipped to it (inside the program)
            as :func:`torch.nn.utils.clip_grad_norm_` does.
        backend: ``"inductor"`` (torch.compile; CUDA graphs on CUDA), ``"jit"``
            (torch.jit.trace of the recorded program), ``"fx"`` (the recorded program,
            uncompiled), ``"pyro"`` (always plain Pyro SVI: the ``compile=False`` path), or
            ``"auto"``: the recorded program through TorchScript at once (it costs well
            under a second and is already faster than Pyro); on CUDA, Inductor with CUDA
            graphs once a signature has run ``compile_after`` steps. On CPU "auto" stays
            with TorchScript: an Inductor compile there (30-150 s on a small CPU) rarely
            earns itself back; ask for it with ``backend="inductor"``.
        check_steps: re-trace the model eagerly on this many steps after each recording
            and compare its structure; a difference falls back to Pyro.
        check_every: also compare every this many steps (0: never).
        max_programs: more distinct input signatures than this falls back to Pyro; so
            does a third one within the first 30 steps (a fourth within 40, ...).
        step_guard: skip an update whose loss or gradient is not finite (parameters and
            optimizer state unchanged; the step returns a non-finite loss). On an
            accelerator the program computes the flag and fused Adam skips through its
            ``found_inf``, with no host read; other optimizers read the flag once. On the
            CPU, where a read is no synchronization, the step reads the flag after the
            program. ``False`` only to measure what the guard costs.
        grad_reducer: ``reduce(loss, params)``, run between the gradient (in ``p.grad``) and
            the update: replaces the gradients in place and returns the loss to report
            (data-parallel training's all-reduce, :mod:`pyro_gen.infer.distributed`).
        mixed_precision: ``torch.bfloat16`` runs every network (each outermost
            ``torch.nn.Module`` call) under autocast in bfloat16 and keeps the
            distributions' log-densities, the loss and the parameters in float32
            (:mod:`~pyro_gen.infer.compiled_precision`); ``None`` (default): float32.
        fused_update: whether a plain Pyro step (``backend="pyro"``, or a loss or model the
            program cannot stand for) updates every parameter with one fused optimizer from
            its first step: as fast as the recorded program's update, equal to Pyro's Adam up
            to float rounding. ``False`` (default) is Pyro's step bit for bit (one optimizer
            per parameter) until a recorded program has made the fused optimizer, which then
            keeps its state.
        compile_after: steps a signature runs uncompiled before it is compiled; default
            500 with ``"auto"`` on CUDA (never on CPU), else 0 for the first signature and
            50 for later ones (the
            last partial batch of an epoch is not worth a compilation).
        retain_cpu_memory: on the CPU, have glibc keep freed memory for the next step
            (:func:`~pyro_gen.infer.cpu_memory.retain_freed_cpu_memory`, process-wide);
            without it, each step page-faults its large temporaries back in.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(x):
        ...     loc = pyro.param("loc", torch.zeros(1))
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("x", dist.Normal(loc, 1.0), obs=x)
        >>> def guide(x):
        ...     pass
        >>> svi = CompiledSVI(model, guide, pyro.optim.Adam({"lr": 0.1}), backend="fx")
        >>> for _ in range(50):
        ...     loss = svi.step(torch.full((8,), 2.0))
        >>> svi.compiled, abs(pyro.param("loc").item() - 2.0) < 0.2
        (True, True)
    """

    def __init__(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        optim: pyro.optim.PyroOptim | None = None,
        loss: ELBO | None = None,
        *,
        grad_clip: float | None = None,
        backend: str = "auto",
        check_steps: int = 2,
        check_every: int = 1000,
        max_programs: int = 8,
        compile_after: int | None = None,
        retain_cpu_memory: bool = True,
        step_guard: bool = True,
        grad_reducer: Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor] | None = None,
        mixed_precision: torch.dtype | None = None,
        fused_update: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}")
        self.model, self.guide = model, guide
        self.optim = optim if optim is not None else pyro.optim.Adam({"lr": 1e-3})
        self.loss = loss if loss is not None else Trace_ELBO()
        self.grad_clip = grad_clip
        self.backend = backend
        self.check_steps, self.check_every = check_steps, check_every
        self.max_programs, self.compile_after = max_programs, compile_after
        self.retain_cpu_memory = retain_cpu_memory
        self.step_guard = step_guard
        self.mixed_precision = check_precision(mixed_precision)
        self.fused_update = fused_update
        self._kl = _kl_messengers(model) + _kl_messengers(guide)
        self._programs: dict[Any, _Program] = {}
        # Input signatures seen once (each ran a plain step), and the eager trace signature
        # of the first batch of each argument structure, whose sites every later batch of
        # that structure must repeat.
        self._sightings: dict[Any, tuple] = {}
        self._local_params: dict[str, torch.Tensor] = {}  # see _note_local_params
        self._first_signatures: dict[Any, tuple] = {}
        self._calls = 0  # steps that asked for a program
        self._updates = GuardedUpdate(self.optim, grad_reducer)
        # Who reads the guard's flag: None, the fused update on the device on accelerators
        # and the step on the CPU (a read is free there); True forces the device (tests).
        self._flag_on_device: bool | None = None
        # KL-annealing factors as device tensors, refilled each step: a new tensor made
        # from a Python float would be a host-to-device copy, which synchronizes on CUDA.
        self._betas: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        self._step_no = 0  # the number of the next step, for the input checks' errors
        # Values a recording holds as constants (Python numbers the model reads) are checked
        # by comparing a step's loss with Pyro's on the same draws (_program_for): after a
        # recording, every check_every steps and when verify_next() asks. Programs found
        # stale are recorded again once; a second change means they keep changing.
        self._verify = False
        self._stale: set[Any] = set()
        self._rerecorded = False
        self.fallback_reason: str | None = None
        self.compile_time_s = 0.0  # recording and compiling, in seconds
        if backend == "pyro":
            self.fallback_reason = "compilation turned off"
        elif not supports(self.loss):
            self._fall_back(f"{loss_name(self.loss)} is not supported")
        # Off for the step's whole life: a checkpoint's record does not turn it on.
        self._off_from_start = self.fallback_reason is not None
        # A restored checkpoint's record of the signatures not met again since (name: None
        # when seen once, else the program's steps and whether compiled), and those of its
        # programs to be recorded again (:mod:`~pyro_gen.infer.compiled_resume`).
        self._resumed: dict[str, tuple[int, bool] | None] = {}
        self._resumed_stale: set[str] = set()
        self._serve_checkpoints()

    # -- public API ----------------------------------------------------------------------

    @property
    def compiled(self) -> bool:
        """Whether steps currently run as a recorded program (not plain Pyro)."""
        return self.fallback_reason is None

    def parameters(self) -> list[torch.Tensor]:
        """The unconstrained parameters the step updates (known after the first step)."""
        return list(self._updates.params)

    def step(self, *args: Any, **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """One gradient step; returns the loss (negative ELBO) as a 0-dim tensor, or a tuple
        of them for a loss of several terms (ReweightedWakeSleep's model and guide losses,
        as Pyro's ``SVI.step`` returns them).

        The loss is not read back to the host; call ``float()`` on it only when needed.
        A NaN loss marks a skipped update: a non-finite loss or gradient, or (on an
        accelerator) a batch that failed one of the model's input checks, which
        :meth:`check` then reports with the model's own error.
        """
        step_no, self._step_no = self._step_no, self._step_no + 1
        self._guess_plate_nesting(args, kwargs)
        ran = self._try_program(args, kwargs)
        if ran is None:
            return self._pyro_step(args, kwargs)
        prog, loss, grads, found, failed, data = ran
        loss = self._updates.program(
            prog.grad_params, loss, grads, found, failed, guard=self.step_guard,
            read_flags=not prog.flag_on_device,
            hold_failed=lambda flag: prog.held.note(flag, data, step_no),
        )  # fmt: skip
        if loss is None:
            # The batch failed an input check (read on the CPU with the guard's flag): the
            # plain step raises the model's own error, or takes the branch the model meant.
            return self._pyro_step(args, kwargs)
        return loss

    def __call__(
        self, step: int, *args: Any, **kwargs: Any
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``fit``'s step protocol: run :meth:`step` as step number ``step`` and return the
        loss, not read back (``fit`` reads losses in groups and raises on a non-finite one,
        asking :meth:`check` first whether a failed input check explains it; that step's
        update was skipped, on the device)."""
        self._step_no = step
        return self.step(*args, **kwargs)

    def check(self) -> None:
        """Raises the model's own error for the first batch since the last call that failed
        one of the model's input checks on the device.

        Input checks are the model's ``if <tensor condition>: raise ...`` lines
        (:mod:`pyro_gen.infer.compiled_checks`). On an accelerator the program runs them on
        the device and a failing batch's update is skipped, with no host read; this call
        reads them back in one transfer and runs the model on the kept batch for its
        error. On the CPU the step reads them with the guard's flag and raises at once.
        A failing batch's loss is NaN, so a caller that reads losses back needs this call
        only when it finds a non-finite one.

        Raises:
            InputCheckError: naming the step, with the model's message.
        """
        progs = list(self._programs.values())
        failed = first_failed([p.held for p in progs])
        if failed is None:
            return
        step, index = failed
        prog = progs[index]
        args, kwargs = prog.rebuild(prog.held.tensors)  # type: ignore[misc]
        try:
            with self._quiet_rng(prog.held.tensors):
                self._eager_signature(args, kwargs)
        except Exception as exc:
            # The model's message, without the trace shapes that Pyro appends to it.
            lines = [line.strip() for line in str(exc).splitlines()]
            if "Trace Shapes:" in lines:
                lines = lines[: lines.index("Trace Shapes:")]
            message = " ".join(line for line in lines if line)
            # Named from 1, as fit's metrics and its non-finite-loss error count steps.
            raise InputCheckError(
                f"the batch of step {step + 1} failed an input check of the model, so its update "
                f"was skipped ({type(exc).__name__}: {message[:500]})"
            ) from exc
        # The model takes this batch after all: the value was control flow, not a check.
        self._fall_back(
            f"a value the model branched on changed at step {step + 1} (that update was skipped)"
        )

    def verify_next(self) -> None:
        """Checks the next recorded step against Pyro's own run before its update.

        A recording holds what the model reads besides parameters and inputs as constants,
        such as a Python number (an observation noise a callback anneals). The step compares
        the program's loss with Pyro's on the same draws after each recording and every
        ``check_every`` steps; this call asks for that check at the next step too (``fit``
        calls it after the epoch's callbacks). A program found stale is recorded again with
        the values read then; if the values change again, the step falls back to plain
        Pyro SVI, saying why.
        """
        self._verify = True

    def loss_and_grads(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Loss and gradients (left in ``.grad``) without an update, like
        ``ELBO.loss_and_grads``; for tests and diagnostics."""
        self._guess_plate_nesting(args, kwargs)
        ran = self._try_program(args, kwargs)
        if ran is not None:
            prog, loss, grads, *_ = ran
            for p, g in zip(prog.grad_params, grads):
                p.grad = g if p.grad is None else p.grad + g
            return loss
        loss, _ = self._plain_loss_and_grads(args, kwargs)
        return torch.as_tensor(loss)

    # -- compiled path -------------------------------------------------------------------

    def _guess_plate_nesting(self, args: tuple, kwargs: dict) -> None:
        """Pyro's ELBO guesses an unset ``max_plate_nesting`` at its first step by running
        the guide and model once, on the training stream of random numbers; the step's
        eager checks run on a forked stream and would make the guess there. Made here, where
        Pyro makes it, the guess leaves the step the same draws as Pyro's SVI."""
        loss = self.loss
        # Plain steps (a fallback, a loss without programs) leave the guess to Pyro's code.
        if self.fallback_reason is not None or not isinstance(loss, ELBO):
            return
        if loss.max_plate_nesting != float("inf"):
            return
        if isinstance(loss, _ENUM_LOSSES) or getattr(loss, "vectorize_particles", False):
            loss._guess_max_plate_nesting(self.model, self.guide, args, kwargs)

    def _try_program(self, args: tuple, kwargs: dict) -> tuple[Any, ...] | None:
        """The program, its loss, gradients, the guard's non-finite flag and the input
        checks' flag (see :meth:`_run`) and the data tensors, or None for a plain step: a
        new input signature, or once the step has fallen back to plain Pyro (which this
        call may decide, saying why)."""
        if self.fallback_reason is not None:
            return None
        try:
            found = self._program_for(args, kwargs)
            if found is None:  # a new input signature: a plain step this time
                return None
            prog, data, expected = found
            loss, grads, found_inf, failed = self._run(prog, data, expected)
        except _StaleConstants as exc:
            if self._rerecorded:
                self._fall_back(
                    f"{exc}, again after a new recording: a value the model reads keeps "
                    "changing (an annealed scale?). Pass it to the model as a tensor argument "
                    "(or anneal KL terms with pyro_gen.infer.annealing.kl_scale) to keep "
                    "the compiled step"
                )
            else:
                self._rerecorded = True
                self._stale.update(self._programs)
                logger.info("pyro_gen: %s; recording the step again", exc)
            return None  # this batch runs as a plain step
        except _Unsupported as exc:
            self._fall_back(str(exc))
            return None
        except OptimizerStateError:  # the user's optimizer state: not the model's to excuse
            raise
        except Exception as exc:  # noqa: BLE001 - the user's run goes on as plain SVI
            # A defect of the model itself shows again, unchanged, in the plain step.
            msg = (str(exc) or type(exc).__name__).splitlines()[0]
            self._fall_back(f"recording failed ({type(exc).__name__}: {msg})")
            return None
        return prog, loss, grads, found_inf, failed, data
