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

References:
    Paszke et al., PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode
    Transformation and Graph Compilation, ASPLOS 2024.
    Kingma & Welling, Auto-Encoding Variational Bayes, arXiv:1312.6114 (the
    reparameterized ELBO gradient).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.infer import (
    ELBO,
    Trace_ELBO,
)
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from pyro_gen.infer.compiled_backends import (
    BACKENDS,
    compile_after,
    compile_program,
    resolved_backend,
)
from pyro_gen.infer.compiled_check_placement import check_where_made
from pyro_gen.infer.compiled_checks import (
    InputCheckError,
    failed_checks,
    first_failed,
    probe_input_checks,
)
from pyro_gen.infer.compiled_elbo import (
    _ENUM_LOSSES,
    _MEAN_FIELD_LOSSES,
    _TRACE_LOSSES,
    BETA_DTYPE,
    _bound_betas,
    _describe_change,
    _elbo_particle,
    _kl_messengers,
    _signature,
)
from pyro_gen.infer.compiled_masks import fill_masked_assignments
from pyro_gen.infer.compiled_optim import guarded_loss, in_layout_of, non_finite, shares_elements
from pyro_gen.infer.compiled_passes import drop_unused, simplify
from pyro_gen.infer.compiled_precision import check_precision, networks_in
from pyro_gen.infer.compiled_recording import (
    _GuardMode,
    _lift_inputs,
    _Noise,
    _Program,
    _Unsupported,
    noise_devices,
    noise_rng_state,
    set_noise_rng_state,
)
from pyro_gen.infer.compiled_update import GuardedUpdate
from pyro_gen.infer.cpu_memory import retain_freed_cpu_memory
from pyro_gen.infer.local_params import LocalParamError, local_params
from pyro_gen.infer.undo_writes import UndoWrites

logger = logging.getLogger("pyro_gen")


class _StaleConstants(Exception):
    """A recorded program's loss is not Pyro's on the same draws: it holds a value that
    has changed since it was recorded."""


__all__ = ["CompiledSVI", "InputCheckError", "supports"]


def supports(loss: ELBO | None) -> bool:
    """Whether :class:`CompiledSVI` can compile this ELBO (else use plain Pyro SVI).

    Example:
        >>> supports(pyro.infer.Trace_ELBO()), supports(pyro.infer.TraceGraph_ELBO())
        (True, False)
    """
    return loss is None or type(loss) in (*_TRACE_LOSSES, *_MEAN_FIELD_LOSSES, *_ENUM_LOSSES)


def _site_names(signature: tuple) -> set[tuple[str, str]]:
    """The (model/guide, name) of every sample and param site of an eager signature."""
    return {(s[0], s[2] if s[1] == "param" else s[1]) for sig in signature for s in sig}


class CompiledSVI:
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
        loss: ``Trace_ELBO`` or ``TraceMeanField_ELBO`` (their Jit variants too); other
            ELBOs fall back to plain Pyro.
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
            self._fall_back(f"{type(self.loss).__name__} is not supported")

    # -- public API ----------------------------------------------------------------------

    @property
    def compiled(self) -> bool:
        """Whether steps currently run as a recorded program (not plain Pyro)."""
        return self.fallback_reason is None

    def parameters(self) -> list[torch.Tensor]:
        """The unconstrained parameters the step updates (known after the first step)."""
        return list(self._updates.params)

    def step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """One gradient step; returns the loss (negative ELBO) as a 0-dim tensor.

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

    def __call__(self, step: int, *args: Any, **kwargs: Any) -> torch.Tensor:
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
            raise InputCheckError(
                f"the batch of step {step} failed an input check of the model, so its update "
                f"was skipped ({type(exc).__name__}: {message[:500]})"
            ) from exc
        # The model takes this batch after all: the value was control flow, not a check.
        self._fall_back(
            f"a value the model branched on changed at step {step} (that update was skipped)"
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
        except Exception as exc:  # noqa: BLE001 - the user's run goes on as plain SVI
            # A defect of the model itself shows again, unchanged, in the plain step.
            msg = (str(exc) or type(exc).__name__).splitlines()[0]
            self._fall_back(f"recording failed ({type(exc).__name__}: {msg})")
            return None
        return prog, loss, grads, found_inf, failed, data

    def _key(self, args: tuple, kwargs: dict) -> tuple[Any, list[torch.Tensor]]:
        flat, spec = pytree.tree_flatten((args, kwargs))
        tensors = [v for v in flat if torch.is_tensor(v)]
        statics = tuple(None if torch.is_tensor(v) else v for v in flat)
        shapes = tuple((tuple(t.shape), t.dtype, t.device, t.requires_grad) for t in tensors)
        key = (spec, shapes, statics, torch.is_grad_enabled())
        try:
            hash(key)
        except TypeError as exc:
            raise _Unsupported(f"a non-tensor argument is not hashable ({exc})") from exc
        return key, tensors

    def _beta_values(self) -> list[float]:
        return [float(m.beta() if callable(m.beta) else m.beta) for m in self._kl]

    def _program_for(
        self, args: tuple, kwargs: dict
    ) -> tuple[_Program, list[torch.Tensor], float | None] | None:
        """The program for these inputs, recorded now if their signature was seen before,
        and the loss Pyro's own run gives on the draws the program will take, where the
        step is checked (else None); None the first time a signature is seen (the caller
        runs a plain step)."""
        key, tensors = self._key(args, kwargs)
        self._calls += 1
        prog = self._programs.get(key)
        held = None
        if prog is not None and key in self._stale:  # recorded again, with today's values
            self._stale.discard(key)
            held, prog = self._programs.pop(key).held, None
        if prog is None:
            # One eager forward pass, which a recording would start with anyway: it tells a
            # model whose sites change with the batch before any recording is spent on it.
            with self._quiet_rng(tensors):
                signature = self._eager_signature(args, kwargs)
            self._check_sites(signature, structure=(key[0], key[2]))
            if key not in self._sightings:
                seen = len(self._sightings)
                # Training data give one signature per argument structure (a semi-supervised
                # model's labelled and unlabelled batches are two), two with a last partial
                # batch; more of one structure, early on, means the shapes change from batch
                # to batch (packed sequences, bucketed lengths), and recording each would
                # cost more than it saves.
                same = sum((k[0], k[2]) == (key[0], key[2]) for k in self._sightings)
                if seen >= self.max_programs or (same >= 2 and self._calls < 10 * (same + 1)):
                    raise _Unsupported(self._why_signatures_vary(key, args, kwargs, same))
                self._sightings[key] = signature
                self._updates.register(self._params_of(signature))
                return None
            prog = self._programs[key] = self._record(args, kwargs, tensors, signature)
            if held is not None:  # batches whose input checks failed, not yet reported
                prog.held = held
        elif not prog.compiled and prog.calls >= compile_after(
            self.backend,
            self.compile_after,
            first=False,
            device=tensors[0].device if tensors else None,
        ):
            start = time.perf_counter()
            prog.fn, prog.compiled = self._compile(prog, tensors), True
            self.compile_time_s += time.perf_counter() - start
        prog.calls += 1
        due = (
            self._verify
            or 1 < prog.calls <= 1 + self.check_steps
            or (self.check_every > 0 and prog.calls % self.check_every == 0)
        )
        expected = None
        if due:
            self._verify = False
            # Under the training stream's RNG state, restored after: the program then draws
            # the same noise, and its loss must be Pyro's.
            with self._quiet_rng(tensors):
                sig, expected = self._eager_run(args, kwargs)
            if sig != prog.signature:
                raise _Unsupported(
                    f"the program's structure changed between steps: "
                    f"{_describe_change(prog.signature, sig)}"
                )
        return prog, tensors, expected

    def _why_signatures_vary(self, key: tuple, args: tuple, kwargs: dict, same: int) -> str:
        """Why this step saw too many input signatures: a non-tensor argument taking new
        values (named, with what to do), or the tensors' shapes changing."""
        keys = [k for k in (*self._sightings, key) if k[0] == key[0]]
        varying = [i for i in range(len(key[2])) if len({k[2][i] for k in keys}) > 1]
        if varying:
            paths = [path for path, _ in pytree.tree_flatten_with_path((args, kwargs))[0]]
            where = ", ".join(f"{_argument_name(paths[i])} (now {key[2][i]!r})" for i in varying)
            return (
                f"a non-tensor argument takes a new value from batch to batch ({where}), and "
                "each value would need its own recording: pass it as a tensor "
                "(torch.tensor(value)) to keep the compiled step"
            )
        return (
            f"the shapes of the inputs change from batch to batch ({same + 1} distinct input "
            f"shapes of one argument structure in {self._calls} steps)"
        )

    def _check_sites(self, signature: tuple, structure: Any) -> None:
        """Raises when the names of the sites differ from those of the first batch with the
        same argument ``structure`` (the pytree of the arguments and their non-tensor
        values, shapes aside). Arguments that change the program by their structure, such
        as the labels a semi-supervised model takes on labelled batches only, give one
        site set each; sites that change with the shapes alone (one site per time step of
        a sequence) mean that each batch would need its own recording. The sites' order
        and kinds are left to the recording's own check: a guide built on its first call
        (Pyro's ``AutoNormal``) visits its sites in another order that once."""
        first = self._first_signatures.setdefault(structure, signature)
        if _site_names(signature) != _site_names(first):
            raise _Unsupported(
                "the model's sites change with the batch, so each batch would need its own "
                f"recording: {_describe_change(first, signature)}"
            )

    def _params_of(self, signature: tuple) -> list[torch.Tensor]:
        names = sorted({s[2] for sig in signature for s in sig if s[1] == "param"})
        store = pyro.get_param_store()
        # A name the store lacks is a module's own param (Pyro's module_local_params): its
        # tensor was read from the eager run's trace.
        found = (store._params[n] if n in store._params else self._local_params[n] for n in names)
        # One tensor may sit under two names (Pyro's AutoNormalizingFlow keeps its first
        # transform parameter as "_prototype_tensor" too): it is one parameter, updated once.
        return list({id(t): t for t in found}.values())

    def _traces(self, args: tuple, kwargs: dict) -> Iterator[tuple[Any, Any]]:
        return self.loss._get_traces(self.model, self.guide, args, kwargs)

    def _eager_signature(self, args: tuple, kwargs: dict) -> tuple:
        return self._eager_run(args, kwargs, with_loss=False)[0]

    def _eager_run(
        self, args: tuple, kwargs: dict, *, with_loss: bool = True
    ) -> tuple[tuple, float | None]:
        """The trace signature of a step on these inputs and (``with_loss``) its loss, from
        Pyro's own run of the model and guide (no update, no gradient)."""
        # On copies of the inputs: transforms cache their last result by the input's
        # identity (Pyro's cache_size=1), and a no-grad result must not be found by the
        # step that follows on the same tensors.
        args, kwargs = pytree.tree_map(
            lambda v: v.clone() if torch.is_tensor(v) else v, (args, kwargs)
        )
        # The check is not a step: running statistics and other buffers it would update
        # (batch norm's) are put back after it, so that they see each step once, as in SVI.
        with torch.no_grad(), self._networks(args, kwargs), UndoWrites():
            betas = [torch.tensor(b, dtype=BETA_DTYPE) for b in self._beta_values()]
            sigs, loss = [], 0.0
            with _bound_betas(self._kl, betas):
                for m, g in self._traces(args, kwargs):
                    sigs.append(_signature(m, g))
                    self._note_local_params(m, g)
                    if with_loss:
                        loss = loss + _elbo_particle(self.loss, m, g)
        return tuple(sigs), float(loss) / self.loss.num_particles if with_loss else None

    def _note_local_params(self, *traces: Any) -> None:
        """Remembers the tensors of param sites outside the global param store (a
        PyroModule's own under Pyro's ``module_local_params``)."""
        try:
            self._local_params.update(local_params(*traces))
        except LocalParamError as exc:
            raise _Unsupported(str(exc)) from exc

    def _networks(self, args: tuple, kwargs: dict) -> contextlib.AbstractContextManager:
        """The networks' precision for a step on these inputs (mixed_precision)."""
        if self.mixed_precision is None:  # skips flattening the arguments on every step
            return contextlib.nullcontext()
        tensors = [v for v in pytree.tree_leaves((args, kwargs)) if torch.is_tensor(v)]
        device_type = tensors[0].device.type if tensors else "cpu"
        return networks_in(self.mixed_precision, device_type)

    @contextlib.contextmanager
    def _quiet_rng(self, tensors: Sequence[torch.Tensor]) -> Iterator[None]:
        # Recording and checking draw noise of their own; the training stream must not
        # notice, so that compiled and plain Pyro runs see the same draws.
        with torch.random.fork_rng(devices=noise_devices(tensors)):
            yield

    def _record(
        self, args: tuple, kwargs: dict, tensors: list[torch.Tensor], signature: tuple
    ) -> _Program:
        """Records the step for these inputs; ``signature`` is their eager run's."""
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
                with pyro.validation_enabled(False), torch.enable_grad(), UndoWrites():
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
            extras = _lift_inputs(gm)
            simplify(gm)
            fill_masked_assignments(gm)
            drop_unused(gm)
            if in_program and not on_device:  # read on the host, which re-checks a raised flag
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
        now = compile_after(self.backend, self.compile_after, first=not self._programs) == 0
        if now and prog.guards and resolved_backend(self.backend) == "inductor":
            # Values read from the data steer this program (control flow): the next batch
            # may not take its path (ProdLDA's int(counts.max()) did not; Inductor had spent
            # 20 s on it), so it compiles once it has held for a while (_program_for).
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

    def _compile(
        self, prog: _Program, data: list[torch.Tensor], backend: str | None = None
    ) -> Callable[..., Any]:
        device = prog.params[0].device if prog.params else torch.device("cpu")
        # Compiling runs the program on example inputs; the buffers it captured (running
        # statistics) must not count those runs as steps. A constant whose elements share
        # memory (a prior's expanded loc, as PyroSample's ``Normal(0, 1).expand(...)``
        # holds) cannot be written in place, by the program or by this restore.
        buffers = [t for t in prog.extras if torch.is_tensor(t) and not shares_elements(t)]
        saved = [t.clone() for t in buffers]
        try:
            return compile_program(
                prog.gm,
                backend or resolved_backend(self.backend),
                device,
                lambda: self._example_inputs(prog, data),
                lambda: self._quiet_rng(prog.params),
            )
        finally:
            with torch.no_grad():
                for target, value in zip(buffers, saved):
                    target.copy_(value)

    def _example_inputs(self, prog: _Program, data: list[torch.Tensor]) -> list[torch.Tensor]:
        # The program returns gradients and mutates no parameter; copies of data and
        # captured buffers keep a warm-up from touching running statistics.
        device = data[0].device if data else torch.device("cpu")
        out = [*prog.params, *(t.clone() for t in data)]
        out += [torch.tensor(b, dtype=BETA_DTYPE, device=device) for b in self._beta_values()]
        for e in prog.extras:
            out.append(e.draw() if isinstance(e, _Noise) else e.clone())
        return out

    def _run(
        self, prog: _Program, data: list[torch.Tensor], expected_loss: float | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """Runs the program: the loss, the gradients, the guard's non-finite flag (None
        unless the program computes it) and the input checks' flag (None unless the model
        has input checks). Values the model branched on are read back and compared here,
        and the loss with ``expected_loss`` (Pyro's on the same draws) where given."""
        dtype = prog.params[0].dtype if prog.params else torch.get_default_dtype()
        device = data[0].device if data else torch.device("cpu")
        betas = self._beta_tensors(dtype, device)
        # A step whose branch changed, or whose loss is not Pyro's, does not count: its noise
        # draws and the buffers it updated (running statistics) are put back before the
        # plain step redoes it.
        checked = bool(prog.guards) or expected_loss is not None
        kept = [e for e in prog.extras if torch.is_tensor(e)] if checked else []
        before = [t.clone() for t in kept]
        rng = noise_rng_state(noise_devices(data)) if checked else None
        extras = [e.draw() if isinstance(e, _Noise) else e for e in prog.extras]
        cuda_graphs = prog.compiled and device.type == "cuda" and resolved_backend(self.backend)
        if cuda_graphs == "inductor":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad():
            out = prog.fn(*prog.params, *data, *betas, *extras)
        loss = out[0].clone() if cuda_graphs == "inductor" else out[0]
        n_grads = len(prog.grad_params)
        found = out[1 + n_grads] if prog.guarded else None
        failed = out[1 + n_grads + prog.guarded] if prog.checked else None

        def undo() -> None:
            with torch.no_grad():
                for target, value in zip(kept, before):
                    target.copy_(value)
            set_noise_rng_state(rng, noise_devices(data))

        for read, expected in zip(out[1 + n_grads + prog.guarded + prog.checked :], prog.guards):
            # One host read per value the model branched on (none for most models).
            if read.item() != expected:
                undo()
                raise _Unsupported(
                    "data-dependent control flow: a tensor value the model or guide branched "
                    f"on changed ({expected!r} when recorded, {read.item()!r} now)"
                )
        if expected_loss is not None:
            got = float(loss)
            # Rounding differs between the program and Pyro's run by far less than this; a
            # constant that went stale (a Python number the model reads) moves it by more.
            if (
                math.isfinite(got)
                and math.isfinite(expected_loss)
                and not math.isclose(got, expected_loss, rel_tol=1e-4, abs_tol=1e-4)
            ):
                undo()
                raise _StaleConstants(
                    f"the recorded step's loss ({got:.6g}) is not Pyro's on the same draws "
                    f"({expected_loss:.6g}): a value the model or guide reads besides its "
                    "parameters and inputs, held as a constant by the recording, has changed"
                )
        return loss, list(out[1 : 1 + n_grads]), found, failed

    def _beta_tensors(self, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        values = self._beta_values()
        held = self._betas.get((dtype, device))
        if held is None or len(held) != len(values):
            held = [torch.empty((), dtype=BETA_DTYPE, device=device) for _ in values]
            self._betas[(dtype, device)] = held
        for t, v in zip(held, values):
            t.fill_(v)  # a kernel argument: no copy from the host
        return held

    # -- plain Pyro path -----------------------------------------------------------------

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        logger.warning("pyro_gen: compiled SVI step off, using plain Pyro SVI: %s", reason)

    def _plain_loss_and_grads(self, args: tuple, kwargs: dict) -> tuple[float, list[torch.Tensor]]:
        """Pyro's loss (a float) and gradients, clipped as the program clips them."""
        with self._networks(args, kwargs), pyro.poutine.trace(param_only=True) as capture:
            if hasattr(self.loss, "loss_and_grads"):
                loss = self.loss.loss_and_grads(self.model, self.guide, *args, **kwargs)
            else:  # a callable loss, as Pyro's SVI takes one (EnergyDistance)
                loss = self.loss(self.model, self.guide, *args, **kwargs)
                if getattr(loss, "requires_grad", False):
                    loss.backward()
        params = list({site["value"].unconstrained() for site in capture.trace.nodes.values()})
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        return float(loss.detach() if torch.is_tensor(loss) else loss), params

    def _pyro_step(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """The step as SVI takes it, updated by :meth:`GuardedUpdate.plain`."""
        loss, params = self._plain_loss_and_grads(args, kwargs)
        return self._updates.plain(loss, params, guard=self.step_guard, fused=self.fused_update)


def _argument_name(path: tuple) -> str:
    """A leaf of ``(args, kwargs)`` as a user names it: ``positional argument 1``,
    ``argument 'beta'``, with the place inside a container after it."""
    top, *rest = path[1:]
    head = (
        f"positional argument {top.idx}"
        if isinstance(top, pytree.SequenceKey)
        else f"argument {top.key!r}"
    )
    return head + (pytree.keystr(tuple(rest)) if rest else "")
