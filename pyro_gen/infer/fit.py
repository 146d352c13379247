"""The one training loop: SVI over any Pyro model/guide pair, with exact checkpoints.

``fit`` itself (its arguments, the set-up) is here; the parts it runs are their own
modules: argument checks (:mod:`~pyro_gen.infer.fit_arguments`), the step function
(:mod:`~pyro_gen.infer.fit_step`), the start or resume from a checkpoint
(:mod:`~pyro_gen.infer.fit_resume`, :mod:`~pyro_gen.infer.fit_progress`), the held-out
data (:mod:`~pyro_gen.infer.fit_held_out`) and the training loop
(:mod:`~pyro_gen.infer.fit_loop`, :mod:`~pyro_gen.infer.fit_read_back`). A name is patched
where it is read: ``READBACK_EVERY`` in ``fit_loop``, ``CompiledSVI`` in ``fit_step``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceTailAdaptive_ELBO

from pyro_gen.data.batching import (
    BatchCalls,
    Transform,
    batch_calls,
    release_peeked,
    with_transform,
)
from pyro_gen.data.random_state import rng_left_alone
from pyro_gen.infer.argument_kinds import check_kinds
from pyro_gen.infer.batch_checks import (
    check_sliced_dimension,
    warn_nothing_observed,
    warn_unscaled_batches,
)
from pyro_gen.infer.checkpoint import CHECKPOINT_NAME, CheckpointError, run_lock
from pyro_gen.infer.compiled_precision import check_trained_dtypes
from pyro_gen.infer.distributed import ShardedBatches, setup
from pyro_gen.infer.elbo_module import unpack_elbo_module
from pyro_gen.infer.fit_arguments import _check_arguments, _device, checked_callbacks
from pyro_gen.infer.fit_held_out import _held_out
from pyro_gen.infer.fit_layout import data_layout
from pyro_gen.infer.fit_loop import READBACK_EVERY, Callback, StepCallback, _train
from pyro_gen.infer.fit_progress import _finished
from pyro_gen.infer.fit_read_back import NonFiniteLossError
from pyro_gen.infer.fit_result import FitResult
from pyro_gen.infer.fit_resume import _on_main, _resume
from pyro_gen.infer.fit_step import _step_function
from pyro_gen.infer.local_params import local_params
from pyro_gen.infer.loss_value import subsampled_size
from pyro_gen.infer.pair_declarations import declared_plate
from pyro_gen.infer.program import Program, program, warm_up
from pyro_gen.infer.program_checks import check_loss, refuse_callable_data
from pyro_gen.infer.run_lock import run_read_lock
from pyro_gen.infer.unregistered_params import warn_unregistered

__all__ = [
    "READBACK_EVERY",
    "Callback",
    "FitResult",
    "NonFiniteLossError",
    "StepCallback",
    "fit",
]


def fit(
    model: Any,
    data: Any,
    *,
    guide: Callable[..., Any] | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    optim: pyro.optim.PyroOptim | None = None,
    loss: Any = None,
    device: torch.device | str | None = None,
    annealing: Callable[[int], float] | None = None,
    grad_clip: float | None = None,
    transform: Transform | None = None,
    eval_data: Any = None,
    eval_every: int = 1,
    plate_name: str | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    callbacks: Iterable[Callback] = (),
    step_callbacks: Iterable[StepCallback] = (),
    progress: bool = True,
    compile: bool | None = None,
    clear_params: bool = False,
    mixed_precision: torch.dtype | None = None,
) -> FitResult:
    """Trains a Pyro model and guide with stochastic variational inference.

    Each step maximises the ELBO (or whichever Pyro ``loss`` is given) on one minibatch:

    .. math::

        \\mathcal{L}(\\theta, \\phi) = \\mathbb{E}_{q_\\phi(z \\mid x)}
            [\\log p_\\theta(x, z) - \\log q_\\phi(z \\mid x)] \\le \\log p_\\theta(x).

    ``model`` is a pyro_gen module (its ``model`` and ``guide`` are used) or any Pyro model
    callable; ``guide=`` swaps in any Pyro guide without touching the model. The data take
    the forms users already have: a tensor (each minibatch passed positionally,
    ``model(batch)``), a tuple of tensors (``model(*batch)``), a dict of tensors
    (``model(**batch)``), or the user's own batches (a list, a ``DataLoader``, a function
    returning a fresh iterator: a dict is passed by name, a tuple or list positionally,
    anything else such as a ``PackedSequence`` as the one argument). Tensor datasets are
    moved to ``device`` once and sliced there. A model without data (an unnormalized
    density, as in Pyro's NeuTra example) takes ``data=()``: ``model()`` at every step, as
    ``svi.step()``, 100 steps an epoch.

    The param store is the caller's: ``fit`` trains what is in it and does not clear it. A
    ``pyro.module`` parameter whose store entry is a stale tensor from an earlier model
    would silently detach the module from training; that raises, and ``clear_params=True``
    starts from an empty store. Gradients left on the trained parameters (a
    ``loss.backward()`` of the user's) are dropped, so that the first update is the first
    step's alone.

    The first batch is checked for what Pyro's ``SVI`` would let pass or report without
    naming the cause. Refused: guide sites that do not match the model's, a data plate not
    over the first dimension of tensor data (time-major sequences), networks on another
    device or of another dtype than the batch, or given integers
    (:class:`~pyro_gen.infer.tensor_mismatch.BatchMismatchError`), a ``pyro.param`` started
    outside its constraint (:class:`~pyro_gen.infer.param_values.ParamInitError`), callbacks
    that cannot take their two arguments. Warned about: global latents beside a plate of the
    batch's size (:class:`~pyro_gen.infer.batch_checks.UnscaledBatchWarning`), a model that
    observes nothing of the batch (:class:`~pyro_gen.infer.batch_checks.NothingObservedWarning`),
    a network used without ``pyro.module``
    (:class:`~pyro_gen.infer.unregistered_params.UnregisteredParameterWarning`).

    How often ``model`` and ``guide`` run is not one call per step, as with Pyro's ``SVI``:
    ``fit`` runs them twice before training (a trace to check the guide's sites against the
    model's and find the data plate, and a run with gradients on to find networks that are
    not registered with Pyro), the compiled step runs them to record its tensor program and
    then replays that program without calling them (10 steps of a small model: 8 calls), and
    evaluation runs them on ``eval_data``. A model that reads Python state changing between
    calls (a call counter, a global) should not rely on being called once per step: pass
    such values as tensors or data, or train with ``compile=False``, where each step runs
    ``model`` and ``guide`` once per particle as ``SVI.step`` does (after the two runs).
    They leave the random number generators as they found them, but the first creates the
    parameters a guide makes on its first call (Pyro's autoguides, a ``pyro.param`` with a
    random initial value): the first step then draws other random numbers than a loop
    whose first ``svi.step`` creates them (a sparse gamma DEF: parameters 0.1 apart after 10
    Adam steps). Call the guide once on a batch beforehand, as one does to inspect an
    autoguide, and ``fit`` with ``compile=False`` takes the loop's steps bit for bit.

    With ``checkpoint_dir``, the run directory is locked while training; after every epoch
    (and every ``checkpoint_every`` steps) ``checkpoint.pt`` is rewritten atomically (module
    and guide state, param store, optimizer, RNG states, progress) and ``metrics.jsonl`` gets
    the epoch's record. If the checkpoint exists when ``fit`` starts, training resumes from
    it exactly, mid-epoch included: ``steps=4`` then a resume to ``steps=12`` gives the same
    parameters as ``steps=12`` in one call. A resume inside an epoch needs the data batched
    as before (the same batch size and number of examples) and is refused otherwise; at an
    epoch boundary the batch size may change. Exactly means bit for bit, where Inductor
    compiles the step too (``compile=True``, or on CUDA after 500 steps), whose program
    rounds otherwise than Pyro's own step: the checkpoint records which input shapes the
    compiled step has met, how many steps each program has taken and which Inductor has
    compiled, and the resumed run takes each step on the path the uninterrupted one took
    (:mod:`~pyro_gen.infer.compiled_resume`). A checkpoint written before that record was
    kept resumes with the programs started afresh (Pyro's own step first on each input
    shape), which under Inductor agrees with the uninterrupted run to float rounding only
    (1e-7 after 8 steps of a small model). A checkpoint of
    a model or guide with other param sites is refused, naming them. ``steps=0`` restores a
    checkpoint and trains nothing (to evaluate or sample from a trained run); a
    ``checkpoint_dir`` without one is then refused. Restoring writes nothing, so the run
    directory may be read-only; a run that another process is training into is refused.

    Under ``torchrun --nproc_per_node N`` (or in a process group the caller initialized),
    ``fit`` trains data-parallel (:mod:`pyro_gen.infer.distributed`): each process takes its
    part of the combined batch of ``N * batch_size`` examples that one process would take,
    the gradients of the param store are summed over the processes by one all-reduce per
    step (weighted by batch size when the data plate subsamples), so that a step is the
    step of one process on the combined batch; each process draws its own sampling noise.
    Rank 0 alone evaluates, shows progress and writes checkpoints and metrics; a checkpoint
    resumes exactly under the same number of processes and is refused under another.

    Args:
        model: a module with ``model(...)`` and ``guide(...)`` methods, or a Pyro model
            callable.
        data: the training data, in any of the forms above.
        guide: a Pyro guide callable used instead of the module's; required for a plain
            model callable.
        epochs: number of passes over ``data`` (total, counting resumed ones).
        steps: alternatively, the total number of optimisation steps.
        batch_size: examples per step (tensor datasets only; the user's batches are used as
            they come); per process when training data-parallel.
        optim: a :class:`pyro.optim.PyroOptim` (``pyro.optim.Adam(...)``,
            ``pyro.optim.PyroOptim(torch.optim.X, args)``, arguments per parameter as a
            function); default Adam with learning rate 1e-3. It may be shared with other
            loops (Pyro's ``SVI``, another ``fit``). ``fit`` never steps a Pyro scheduler
            (``pyro.optim.ExponentialLR`` ...) itself, as Pyro's ``SVI`` does not: step it
            where Pyro's docs do, once per epoch, ``callbacks=[lambda record, module:
            scheduler.step()]`` (``scheduler.step(record["train_loss"])`` for
            ``ReduceLROnPlateau``), or once per step (``OneCycleLR``):
            ``step_callbacks=[changes_only_tensors(lambda step, module:
            scheduler.step())]``; either way its state is checkpointed and resumed.
            Refused: torch optimizers and schedulers not wrapped by ``pyro.optim``, the
            ``pyro.optim.multi`` optimizers, and one whose step needs a closure (LBFGS).
        loss: a Pyro ELBO (any of Pyro's, e.g. ``TraceEnum_ELBO`` for enumerated discrete
            sites), another Pyro loss object with ``loss_and_grads`` (the adversarial losses
            of :mod:`pyro_gen.gan`), or a callable loss as Pyro's ``SVI`` takes one
            (``EnergyDistance``); default :class:`~pyro.infer.Trace_ELBO`. A loss of
            several terms (``ReweightedWakeSleep``: the model's, then the guide's) trains
            on all of them, skips a step where any is not finite, and records the first as
            ``train_loss``.
        device: where modules and tensor data live during training; default the module's,
            or for a plain model function the tensor data's (the user's networks are where
            the user put them, as in Pyro's loop).
        annealing: ``step -> beta`` applied to latent sites only (KL warm-up), e.g.
            :class:`~pyro_gen.infer.LinearAnnealing`.
        grad_clip: clip the global gradient norm to this positive value.
        transform: applied on the device to each batch: a callable for the first positional
            argument (or ``x`` when the batch is passed by name), or a dict from argument
            names or positions to callables (e.g. dynamic binarization).
        eval_data: held-out data in the same form; its ELBO per example is recorded as
            ``test_elbo`` (for a loss that is not an ELBO, the loss per example as
            ``test_loss``). Its first batch is read before training, so that data the
            model cannot be scored on fail before an epoch's work, not after; that read is
            the first evaluation's, so a function returning batches is called once per
            evaluation (on each process when data-parallel, where rank 0 evaluates). An
            iterator is read by one evaluation only (``eval_every=epochs``).
        eval_every: evaluate every this many epochs.
        plate_name: the ``pyro.plate`` over the examples, for evaluating ``eval_data``
            (found from the model's trace by default: see
            :func:`~pyro_gen.infer.evaluate_elbo`).
        checkpoint_dir: where checkpoints and metrics go; None keeps nothing on disk.
        checkpoint_every: also checkpoint every this many steps inside an epoch.
        callbacks: ``callback(record, model)`` after each epoch, before its checkpoint is
            written (so a resume keeps what they changed); returning True stops. When
            data-parallel they run on every process, with rank 0's record (one asking to
            stop stops all); write files only where
            :func:`~pyro_gen.infer.distributed.is_main_process` holds.
        step_callbacks: ``callback(step, model)`` after each optimisation step, ``step``
            counting the steps taken so far; for updates that must follow the optimizer,
            such as an exponential moving average of the weights, rather than sit inside
            ``model`` (where they would also stop the compiled step from applying). The
            compiled step checks its recording against Pyro's run after each (a callback
            may change a number the model reads); mark one that changes only tensors with
            :func:`~pyro_gen.infer.changes_only_tensors` to spare that forward pass. A
            callback returning ``True`` stops training after that step, as ``steps=`` does:
            with ``checkpoint_dir``, a checkpoint of that step is written (no evaluation of
            the partial epoch), and ``fit`` called again resumes from it exactly (the
            command line stops so on SIGTERM). Not under data-parallel training.
        progress: show a progress bar with the loss and examples per second.
        compile: ``None`` (default) runs the compiled ELBO step of
            :class:`~pyro_gen.infer.compiled.CompiledSVI` where the loss supports it
            (TorchScript at once; on CUDA, Inductor with CUDA graphs after 500 steps);
            ``True`` compiles with Inductor from the start; ``False`` runs plain Pyro SVI.
        clear_params: empty the Pyro param store before training.
        mixed_precision: ``torch.bfloat16`` runs the networks under autocast in bfloat16
            while log-densities, the loss and the parameters stay float32
            (:class:`~pyro_gen.infer.compiled.CompiledSVI`); ``None`` (default): float32.

    Returns:
        A :class:`FitResult` with one record per epoch: ``train_loss`` is the epoch's loss
        per example. Where the data plate subsamples (``pyro.plate("data", N,
        subsample=...)``), Pyro scales each step's loss to the whole data set, so a step
        counts for the plate's ``N`` examples, not its batch's.

    Raises:
        NonFiniteLossError: when a step's loss or gradient is NaN or infinite. That update is
            skipped (the parameters stay finite); the error is raised at the next read-back
            of the loss (every ``READBACK_EVERY`` steps, at each checkpoint and at the end of
            each epoch, before anything is written), naming the step.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> loc = torch.nn.Parameter(torch.zeros(()))
        >>> def model(x):
        ...     pyro.module("mean", torch.nn.ParameterList([loc]))
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)
        >>> def guide(x):
        ...     pass
        >>> result = fit(model, torch.full((64,), 3.0), guide=guide, epochs=100, batch_size=64,
        ...              optim=pyro.optim.Adam({"lr": 0.1}), progress=False)
        >>> round(loc.item())
        3
    """
    refuse_callable_data(data)
    _check_arguments(
        epochs, steps, batch_size, grad_clip, eval_every, checkpoint_every, checkpoint_dir, optim
    )
    check_kinds(
        compile=compile,
        annealing=annealing,
        plate_name=plate_name,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        clear_params=clear_params,
    )
    callbacks = checked_callbacks("callbacks", callbacks, "callback(record, model)")
    step_callbacks = checked_callbacks("step_callbacks", step_callbacks, "callback(step, model)")
    model, guide, loss = unpack_elbo_module(model, guide, loss)  # Trace_ELBO(...)(m, g)
    loss = loss if loss is not None else Trace_ELBO()
    check_loss(loss)
    if isinstance(loss, TraceTailAdaptive_ELBO):
        raise ValueError(
            "TraceTailAdaptive_ELBO estimates no loss (Pyro returns inf at every step by "
            "design), which fit's guard cannot tell from a divergence: train it with Pyro's "
            "SVI, or pass another ELBO"
        )
    prog = program(model, guide, loss)
    device = _device(model, prog, device, data)
    dp = setup(device)
    if dp is not None:
        device = dp.device
        if hasattr(loss, "loss_and_grads") and not isinstance(loss, ELBO):
            raise ValueError(
                f"data-parallel training takes a Pyro ELBO or a callable loss; "
                f"{type(loss).__name__} updates networks of its own inside loss_and_grads, "
                "which the processes cannot keep in step: train it in one process"
            )
    for m in prog.modules.values():
        m.to(device)
    if dp is not None:
        batches: BatchCalls | ShardedBatches = dp.shard(data, batch_size)
    else:
        batches = batch_calls(data, batch_size, shuffle=True, device=device)
    optim = optim if optim is not None else pyro.optim.Adam({"lr": 1e-3})
    if clear_params:
        pyro.clear_param_store()
    beta = [1.0]
    reducer = dp.reducer(grad_clip) if dp is not None else None
    step_fn = _step_function(
        prog, optim, loss, grad_clip, annealing, beta, compile, reducer, mixed_precision
    )
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    with contextlib.ExitStack() as stack:

        def lock() -> None:
            if ckpt_dir is not None:
                if steps == 0 and not (ckpt_dir / CHECKPOINT_NAME).exists():
                    # restoring only: a mistyped directory restored nothing, silently (and
                    # was created), and the untrained model was evaluated as the trained one
                    raise CheckpointError(
                        f"fit(steps=0) restores the checkpoint in checkpoint_dir, but "
                        f"{ckpt_dir} has no {CHECKPOINT_NAME}: point at the run's directory; "
                        "nothing was restored or created"
                    )
                # restoring only writes nothing, so it reads a read-only run: no lock file
                # is created, and a run training there is still refused
                held = run_read_lock(ckpt_dir) if steps == 0 else run_lock(ckpt_dir, training=True)
                stack.enter_context(held)

        _on_main(dp, lock)  # only rank 0 touches the run directory
        # A pass the first read below keeps (a DataLoader's iterator, its workers) goes when
        # fit does, returning or raising, not when the error's traceback goes.
        stack.callback(release_peeked, batches)
        first = batches.peek()
        prog.check_call(first, 0)
        # The warm-up's transform (a dynamic binarization) draws noise that is not the first
        # step's: the RNG goes back, so fit steps as Pyro's SVI loop does from the same seed
        # and a resumed run as a straight one.
        with rng_left_alone():
            first = with_transform(first, transform)
        traces = warm_up(prog, first, check_sites=isinstance(loss, ELBO), plate_name=plate_name)
        # The param-store names the pair registers: a resume refuses a checkpoint written by
        # a model that had others, and every checkpoint records them for the next resume.
        params = sorted({n for t in traces for n, s in t.nodes.items() if s["type"] == "param"})
        local = local_params(*traces)  # a PyroModule's own, under module_local_params
        if mixed_precision is not None:
            store = dict(pyro.get_param_store().named_parameters())
            check_trained_dtypes(mixed_precision, {n: store[n] for n in params if n in store})
        if dp is not None:
            dp.start(prog.modules, loss, prog, first)
        layout = data_layout(batches, batch_size)
        data_plate = plate_name or declared_plate(model)
        if layout["batch_size"] is not None:  # tensor data, cut by fit
            check_sliced_dimension(traces[1], data_plate, first.size)
        warn_unscaled_batches(
            traces[1],
            data_plate,
            layout["examples"],
            sliced=layout["batch_size"] is not None,
        )
        if isinstance(loss, ELBO):  # other losses (adversarial) read the data their own way
            warn_nothing_observed(traces[1], first)
        warn_unregistered(prog, first)
        state = _resume(dp, ckpt_dir, device, prog, optim, params, local, layout, epochs, steps)
        held_out = None
        if eval_data is not None and not _finished(state, epochs, steps):
            held_out = _held_out(
                prog,
                model,
                eval_data,
                state,
                epochs,
                eval_every,
                loss,
                batch_size,
                transform,
                plate_name,
                device,
            )
        _clear_gradients(prog, params, local)
        return _train(
            model,
            guide,
            prog,
            batches,
            step_fn,
            state,
            optim=optim,
            params=params,
            local=local,
            loss=loss,
            epochs=epochs,
            steps=steps,
            batch_size=batch_size,
            annealing=annealing,
            beta=beta,
            transform=transform,
            held_out=held_out,
            eval_every=eval_every,
            plate_name=plate_name,
            represented=subsampled_size(traces[1], data_plate),
            ckpt_dir=ckpt_dir,
            checkpoint_every=checkpoint_every,
            callbacks=callbacks,
            step_callbacks=step_callbacks,
            progress=progress,
            dp=dp,
            device=device,
        )


def _clear_gradients(prog: Program, params: list[str], local: dict[str, torch.Tensor]) -> None:
    """Drops gradients left on what ``fit`` trains (the user's own ``loss.backward()``, a
    loop stopped between backward and update): a step adds its gradients into ``.grad``, as
    autograd and Pyro's SVI do, so its first update would carry them. A training loop starts
    from zero gradients, as a torch loop's ``zero_grad`` does."""
    store = dict(pyro.get_param_store().named_parameters())
    trained = [store[n] for n in params if n in store] + list(local.values())
    for p in itertools.chain(trained, *(m.parameters() for m in prog.modules.values())):
        p.grad = None
