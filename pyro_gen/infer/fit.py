"""The one training loop: SVI over any Pyro model/guide pair, with exact checkpoints."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import numbers
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import pyro.util
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceTailAdaptive_ELBO
from tqdm.auto import tqdm

from pyro_gen.data.batching import BatchCalls, Call, Transform, batch_calls, with_transform
from pyro_gen.infer.annealing import kl_scale_pair
from pyro_gen.infer.callbacks import only_tensors
from pyro_gen.infer.checkpoint import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    CheckpointError,
    append_metrics,
    load_checkpoint,
    parse_checkpoint,
    restore_checkpoint,
    run_lock,
    save_checkpoint,
    write_metrics,
)
from pyro_gen.infer.compiled import CompiledSVI, supports
from pyro_gen.infer.distributed import (
    DataParallel,
    GradReducer,
    ShardedBatches,
    rng_state,
    set_rng_state,
    setup,
)
from pyro_gen.infer.evaluation import declared_plate, evaluate_elbo, module_device
from pyro_gen.infer.fit_layout import Layout, check_layout, data_layout
from pyro_gen.infer.held_out import HeldOutData, evaluations
from pyro_gen.infer.local_params import local_params
from pyro_gen.infer.log_weights import find_data_plate
from pyro_gen.infer.program import Program, program, trace_once, warm_up

logger = logging.getLogger("pyro_gen")

Callback = Callable[[dict[str, Any], Any], Any]
StepCallback = Callable[[int, Any], Any]

# Steps between host read-backs of the loss. Reading a CUDA loss back stalls the host until
# the device has caught up, so the loop reads losses in groups, for the progress bar and the
# NaN check, and never once per step.
READBACK_EVERY = 20


class NonFiniteLossError(FloatingPointError):
    """The loss or a gradient became NaN or infinite; that update was skipped."""


@dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch records and where training stopped.

    Attributes:
        history: one record per epoch; when ``steps=`` stops inside an epoch, a last record
            with ``"partial": True`` covers the batches of that epoch trained so far.
        epoch: completed epochs.
        step: optimisation steps taken.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    step: int = 0


def _read_back(losses: list[torch.Tensor], first_step: int) -> float:
    """The sum of ``losses`` (the steps from ``first_step`` on), read back in one transfer.

    A step whose update was skipped on the device (non-finite loss or gradient) returns a
    non-finite loss.

    Raises:
        NonFiniteLossError: naming the first step whose loss was NaN or infinite.
    """
    # A plain Pyro step's loss is on the CPU and a recorded step's on the data's device: bring
    # them to the last one's device, then read once (the read waits for the device anyway).
    device = losses[-1].device
    values = torch.stack([l.detach().reshape(()).double().to(device) for l in losses]).tolist()
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"the loss or a gradient became non-finite at step {first_step + i} (loss "
                f"{value}); that update was skipped and the parameters are finite. Lower the "
                "learning rate, set grad_clip, or check the data"
            )
    return math.fsum(values)


@torch.no_grad()
def _evaluate_loss(
    prog: Program,
    data: Any,
    loss: Any,
    batch_size: int,
    transform: Transform | None,
    device: torch.device,
) -> float:
    """A loss object's value per example on held-out data (modules in eval mode), the
    batches moved to the training ``device``."""
    modes = {name: m.training for name, m in prog.modules.items()}
    for m in prog.modules.values():
        m.eval()
    total, seen = 0.0, 0
    try:
        for call in batch_calls(data, batch_size, shuffle=False, device=device):
            call = with_transform(call, transform)
            evaluate = loss.loss if hasattr(loss, "loss_and_grads") else loss
            total += float(evaluate(prog.model, prog.guide, *call.args, **call.kwargs))
            seen += call.size if call.size is not None else 1
    finally:
        for name, m in prog.modules.items():
            m.train(modes[name])
    return total / max(seen, 1)


def _whole(name: str, value: Any, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "non-negative" if minimum == 0 else "positive"
        raise ValueError(f"{name} must be a {kind} whole number, got {value!r}")


def _check_arguments(
    epochs: Any,
    steps: Any,
    batch_size: Any,
    grad_clip: Any,
    eval_every: Any,
    checkpoint_every: Any,
    checkpoint_dir: Any,
    optim: Any,
) -> None:
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    _whole("epochs", epochs, 0)
    _whole("steps", steps, 0)
    _whole("batch_size", batch_size, 1)
    _whole("eval_every", eval_every, 1)
    _whole("checkpoint_every", checkpoint_every, 1)
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("checkpoint_every= needs checkpoint_dir= (where to write them)")
    if grad_clip is not None and not (
        isinstance(grad_clip, numbers.Real) and math.isfinite(grad_clip) and grad_clip > 0
    ):
        raise ValueError(
            f"grad_clip must be a positive finite gradient norm, got {grad_clip!r} "
            "(None turns clipping off)"
        )
    if optim is not None and not isinstance(optim, pyro.optim.PyroOptim):
        raise TypeError(
            f"optim must be a pyro.optim.PyroOptim such as pyro.optim.Adam({{'lr': 1e-3}}), "
            f"got {type(optim).__name__}"
        )


def _device(model: Any, prog: Program, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for m in prog.modules.values():
        if next(iter([*m.parameters(), *m.buffers()]), None) is not None:
            return module_device(m)
    return torch.device("cpu")


@dataclass
class _Progress:
    """Where training stands; what a checkpoint records besides the state of the objects."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # Inside an epoch: batches done, the RNG state at the epoch's start (to redraw its
    # shuffle order on resume), and the running sums of its record.
    batch: int = 0
    epoch_rng_state: dict[str, Any] | None = None
    epoch_loss: float = 0.0
    epoch_seen: int = 0
    epoch_time: float = 0.0
    # Data-parallel runs: the number of processes, and each one's RNG streams.
    world_size: int = 1
    rank_streams: list[dict[str, Any]] | None = None
    # How the data were cut into batches (:func:`~pyro_gen.infer.fit_layout.data_layout`): a
    # mid-epoch resume needs the same.
    layout: Layout | None = None

    def state(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _step_function(
    prog: Program,
    optim: pyro.optim.PyroOptim,
    loss: Any,
    grad_clip: float | None,
    annealing: Callable[[int], float] | None,
    beta: list[float],
    compile: bool | None,
    reducer: GradReducer | None,
    mixed_precision: torch.dtype | None,
) -> Callable[..., torch.Tensor]:
    model, guide = prog.model, prog.guide
    if annealing is not None:
        model, guide = kl_scale_pair(model, guide, lambda: beta[0])
    # backend="pyro" is Pyro's SVI step with the same guard, clipping and optimizer handling;
    # the compiled program falls back to it by itself (one log line saying why) when the
    # model's structure changes between steps or a site is unsupported.
    if compile is False or not supports(loss):
        backend = "pyro"
        if compile is not False and isinstance(loss, ELBO):
            logger.log(
                logging.WARNING if compile else logging.INFO,
                "pyro_gen: %s is not supported by the compiled step (Trace_ELBO, "
                "TraceMeanField_ELBO, TraceEnum_ELBO and their Jit variants are): training "
                "with Pyro's own SVI step",
                type(loss).__name__,
            )
    else:
        backend = "inductor" if compile else "auto"
    if reducer is not None:  # clipping then applies to the summed gradient
        grad_clip = None
    return CompiledSVI(
        model,
        guide,
        optim,
        loss,
        grad_clip=grad_clip,
        backend=backend,
        grad_reducer=reducer,
        mixed_precision=mixed_precision,
        # compile=False is Pyro's SVI step bit for bit; otherwise the plain step (a loss
        # the program does not support, a fallback) takes the fused update
        fused_update=compile is not False,
    )


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

    How often ``model`` and ``guide`` run is not one call per step, as with Pyro's ``SVI``:
    ``fit`` traces them once before training (to check the guide's sites against the model's
    and find the data plate), the compiled step runs them to record its tensor program and
    then replays that program without calling them (10 steps of a small model: 8 calls), and
    evaluation runs them on ``eval_data``. A model that reads Python state changing between
    calls (a call counter, a global) should not rely on being called once per step: pass
    such values as tensors or data, or train with ``compile=False``, where each step runs
    ``model`` and ``guide`` once per particle as ``SVI.step`` does (after the one trace).
    That trace leaves the random number generators as it found them, but it creates the
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
    epoch boundary the batch size may change. A checkpoint of a model or guide with other
    param sites is refused, naming them. ``steps=0`` restores a checkpoint and trains nothing
    (to evaluate or sample from a trained run).

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
        optim: a :class:`pyro.optim.PyroOptim`; default Adam with learning rate 1e-3. It may
            be shared with other loops (Pyro's ``SVI``, another ``fit``). A Pyro scheduler
            (``pyro.optim.ExponentialLR`` ...) advances where Pyro's docs step it, between
            epochs: ``callbacks=[lambda record, module: scheduler.step()]``.
        loss: a Pyro ELBO (any of Pyro's, e.g. ``TraceEnum_ELBO`` for enumerated discrete
            sites), another Pyro loss object with ``loss_and_grads`` (the adversarial losses
            of :mod:`pyro_gen.gan`), or a callable loss as Pyro's ``SVI`` takes one
            (``EnergyDistance``); default :class:`~pyro.infer.Trace_ELBO`.
        device: where modules and tensor data live during training; default the module's.
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
            :func:`~pyro_gen.infer.changes_only_tensors` to spare that forward pass.
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
        A :class:`FitResult` with one record per epoch.

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
    _check_arguments(
        epochs, steps, batch_size, grad_clip, eval_every, checkpoint_every, checkpoint_dir, optim
    )
    loss = loss if loss is not None else Trace_ELBO()
    if not (hasattr(loss, "loss_and_grads") or callable(loss)):
        raise TypeError(
            f"loss must be a Pyro loss (an ELBO, an object with loss_and_grads, or a callable "
            f"loss(model, guide, *args)), got {type(loss).__name__}"
        )
    if isinstance(loss, TraceTailAdaptive_ELBO):
        raise ValueError(
            "TraceTailAdaptive_ELBO estimates no loss (Pyro returns inf at every step by "
            "design), which fit's guard cannot tell from a divergence: train it with Pyro's "
            "SVI, or pass another ELBO"
        )
    prog = program(model, guide, loss)
    device = _device(model, prog, device)
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
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                stack.enter_context(run_lock(ckpt_dir))

        _on_main(dp, lock)  # only rank 0 touches the run directory
        first = batches.peek()
        prog.check_call(first, 0)
        first = with_transform(first, transform)
        traces = warm_up(prog, first, check_sites=isinstance(loss, ELBO))
        # The param-store names the pair registers: a resume refuses a checkpoint written by
        # a model that had others, and every checkpoint records them for the next resume.
        params = sorted({n for t in traces for n, s in t.nodes.items() if s["type"] == "param"})
        local = local_params(*traces)  # a PyroModule's own, under module_local_params
        if dp is not None:
            dp.start(prog.modules, loss, prog, first)
        layout = data_layout(batches, batch_size)
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
            ckpt_dir=ckpt_dir,
            checkpoint_every=checkpoint_every,
            callbacks=list(callbacks),
            step_callbacks=list(step_callbacks),
            progress=progress,
            dp=dp,
            device=device,
        )


def _held_out(
    prog: Program,
    model: Any,
    eval_data: Any,
    state: _Progress,
    epochs: int | None,
    eval_every: int,
    loss: Any,
    batch_size: int,
    transform: Transform | None,
    plate_name: str | None,
    device: torch.device,
) -> HeldOutData:
    """``eval_data`` checked before training, not after an epoch of it: its first batch is
    read (the first evaluation's own read, so the user's batch function is called once per
    evaluation) and, for an ELBO, the plate evaluate_elbo will score by is found on it."""
    if isinstance(eval_data, Iterator) and epochs is not None:
        count = evaluations(state.epoch, epochs, eval_every)
        if count > 1:
            raise ValueError(
                f"eval_data is an iterator, which one evaluation uses up, and this run "
                f"evaluates {count} times (epochs={epochs}, eval_every={eval_every}): pass a "
                "tensor, a list of batches or a function returning a fresh iterator, or "
                f"eval_every={epochs} to evaluate once at the end"
            )
    held_out = HeldOutData(eval_data, batch_size, device)
    if isinstance(loss, ELBO):
        _, model_trace = trace_once(prog, with_transform(held_out.first, transform))
        find_data_plate(model_trace, plate_name or declared_plate(model))
    return held_out


def _clear_gradients(prog: Program, params: list[str], local: dict[str, torch.Tensor]) -> None:
    """Drops gradients left on what ``fit`` trains (the user's own ``loss.backward()``, a
    loop stopped between backward and update): a step adds its gradients into ``.grad``, as
    autograd and Pyro's SVI do, so its first update would carry them. A training loop starts
    from zero gradients, as a torch loop's ``zero_grad`` does."""
    store = dict(pyro.get_param_store().named_parameters())
    trained = [store[n] for n in params if n in store] + list(local.values())
    for p in itertools.chain(trained, *(m.parameters() for m in prog.modules.values())):
        p.grad = None


def _on_main(dp: DataParallel | None, fn: Callable[[], Any]) -> Any:
    return fn() if dp is None else dp.on_main(fn)


def _resume(
    dp: DataParallel | None,
    ckpt_dir: Path | None,
    device: torch.device,
    prog: Program,
    optim: pyro.optim.PyroOptim,
    params: list[str],
    local: dict[str, torch.Tensor],
    layout: Layout,
    epochs: int | None,
    steps: int | None,
) -> _Progress:
    """The progress to start from: fresh, or restored (objects, RNG streams) from the run
    directory's checkpoint, which rank 0 reads and every rank restores. A checkpoint that
    cannot continue this run exactly is refused before anything is restored."""
    world_size = dp.world_size if dp is not None else 1
    if ckpt_dir is None:
        return _Progress(world_size=world_size, layout=layout)
    path = ckpt_dir / CHECKPOINT_NAME

    def read() -> bytes | None:
        if not path.exists():
            return None
        if not path.is_file():
            load_checkpoint(path)  # raises its error, naming the path
        return path.read_bytes()

    # Rank 0 reads the bytes and every rank parses them (onto its own device): a parsed
    # checkpoint sent between processes would hold copies of the constraint singletons.
    raw = _on_main(dp, read)
    ckpt = parse_checkpoint(raw, path, map_location=device) if raw is not None else None
    state = _Progress(world_size=world_size, layout=layout)
    if ckpt is not None:
        saved = _Progress(**ckpt["progress"])
        if saved.world_size != world_size:
            raise CheckpointError(
                f"checkpoint {path} was written by {saved.world_size} process(es) and this run "
                f"has {world_size}: the shuffle order and each process's random numbers depend "
                f"on the number of processes, so it resumes exactly only under "
                f"{saved.world_size} (torchrun --nproc_per_node {saved.world_size}, or one "
                "process for 1); or train into a fresh checkpoint_dir"
            )
        if not _finished(saved, epochs, steps):  # restoring only (steps=0): any batching
            check_layout(path, saved.epoch, saved.batch, saved.layout, layout)
        state = _Progress(
            **restore_checkpoint(
                ckpt, modules=prog.modules, optim=optim, params=params, local_params=local
            )
        )
        # at an epoch boundary the data may be batched anew (as Lightning allows)
        state.layout = layout
        if dp is not None and state.rank_streams is not None:
            dp.restore_streams(state.rank_streams)

    def reset_metrics() -> None:
        if state.history or (ckpt_dir / METRICS_NAME).exists():
            # the records match the checkpoint: none for a fresh start, whatever was there
            write_metrics(ckpt_dir / METRICS_NAME, state.history)

    _on_main(dp, reset_metrics)
    return state


def _finished(progress: _Progress, epochs: int | None, steps: int | None) -> bool:
    return (epochs is not None and progress.epoch >= epochs) or (
        steps is not None and progress.step >= steps
    )


def _epoch_calls(
    batches: BatchCalls | ShardedBatches, skip: int, number: int
) -> Iterator[tuple[Call, int]]:
    """The epoch's ``(call, examples in the step)`` pairs, its order drawn now."""
    if isinstance(batches, ShardedBatches):
        return batches.epoch(skip=skip, number=number)
    return ((c, c.size if c.size is not None else 1) for c in batches.epoch(skip=skip))


def _train(
    model: Any,
    guide: Any,
    prog: Program,
    batches: BatchCalls | ShardedBatches,
    step_fn: Callable[..., torch.Tensor],
    state: _Progress,
    *,
    optim: pyro.optim.PyroOptim,
    params: list[str],
    local: dict[str, torch.Tensor],
    loss: Any,
    epochs: int | None,
    steps: int | None,
    batch_size: int,
    annealing: Callable[[int], float] | None,
    beta: list[float],
    transform: Transform | None,
    held_out: HeldOutData | None,
    eval_every: int,
    plate_name: str | None,
    ckpt_dir: Path | None,
    checkpoint_every: int | None,
    callbacks: list[Callback],
    step_callbacks: list[StepCallback],
    progress: bool,
    dp: DataParallel | None,
    device: torch.device,
) -> FitResult:
    main = dp is None or dp.main  # the process that evaluates, writes and shows progress
    progress = progress and main
    # The recorded step's check against Pyro's run (None: a step with nothing recorded).
    verify: Callable[[], None] = getattr(step_fn, "verify_next", None) or (lambda: None)
    check_after_callbacks = not only_tensors(step_callbacks)
    if check_after_callbacks and hasattr(step_fn, "verify_next"):
        logger.info(
            "pyro_gen: a step callback may change a value the model reads, so each step after "
            "one is checked against Pyro's run (one more forward pass; measured: twice the "
            "step time of an MNIST VAE): mark callbacks that change only tensors with "
            "pyro_gen.infer.changes_only_tensors (unmarked: %s)",
            ", ".join(
                getattr(cb, "__name__", type(cb).__name__)
                for cb in step_callbacks
                if not only_tensors([cb])
            ),
        )

    def done() -> bool:
        return _finished(state, epochs, steps)

    def save() -> None:
        if dp is not None:
            dp.sync_buffers(prog.modules)
            if ckpt_dir is not None:
                state.rank_streams = dp.gather_streams()
        if ckpt_dir is not None and main:
            path, progress = ckpt_dir / CHECKPOINT_NAME, state.state()
            save_checkpoint(
                path,
                modules=prog.modules,
                optim=optim,
                progress=progress,
                params=params,
                local_params=local,
            )

    partial: dict[str, Any] | None = None
    while not done():
        for m in prog.modules.values():
            m.train()
        # Tensor data on CUDA draw their order from the CUDA generator: it is recorded too.
        if state.batch == 0:
            state.epoch_rng_state = rng_state(device)
            epoch_batches = _epoch_calls(batches, 0, state.epoch)
        else:  # resuming mid-epoch: redraw the epoch's order, then carry on from here
            now = rng_state(device)
            set_rng_state(state.epoch_rng_state, device)
            epoch_batches = _epoch_calls(batches, state.batch, state.epoch)
            set_rng_state(now, device)
        if dp is not None:  # the order came from the shared stream; noise is the rank's own
            dp.enter_epoch()
        try:
            total = len(batches)
        except TypeError:
            total = None
        bar = tqdm(
            epoch_batches,
            total=total,
            initial=state.batch,
            desc=f"epoch {state.epoch + 1}",
            disable=not progress,
            leave=False,
        )
        start = time.perf_counter() - state.epoch_time
        pending: list[torch.Tensor] = []

        def read_back(start: float = start) -> None:
            nonlocal pending
            if pending:
                try:
                    state.epoch_loss += _read_back(pending, state.step - len(pending))
                except NonFiniteLossError:
                    # A batch that failed one of the model's input checks on the device
                    # also reads back NaN: raise the model's own error for it instead.
                    step_fn.check()
                    raise
                pending = []
            state.epoch_time = time.perf_counter() - start

        stopped_inside = False
        for call, examples in bar:
            prog.check_call(call, state.batch)
            call = with_transform(call, transform)
            if annealing is not None:
                beta[0] = float(annealing(state.step))
            if dp is not None:
                dp.begin_step(call.size if call.size is not None else 1, examples)
            pending.append(step_fn(state.step, *call.args, **call.kwargs))
            state.epoch_seen += examples
            state.step += 1
            state.batch += 1
            for step_callback in step_callbacks:
                step_callback(state.step, model)
            if check_after_callbacks:
                # A step callback may change a value the model reads, which the recorded
                # step holds as a constant: the next step checks it against Pyro's.
                verify()
            if len(pending) == READBACK_EVERY:
                read_back()
                rate = state.epoch_seen / max(state.epoch_time, 1e-9)
                bar.set_postfix(
                    loss=f"{state.epoch_loss / state.epoch_seen:.3f}", ex_per_s=f"{rate:.0f}"
                )
            if steps is not None and state.step >= steps:
                stopped_inside = total is None or state.batch < total
                break
            at_end = total is not None and state.batch == total
            if checkpoint_every is not None and state.step % checkpoint_every == 0 and not at_end:
                read_back()
                save()
        bar.close()
        read_back()
        if dp is not None:
            dp.leave_epoch()
        if state.batch == 0:
            raise ValueError(f"data yielded no batches in epoch {state.epoch + 1}")
        record: dict[str, Any] = {
            "epoch": state.epoch + 1,
            "step": state.step,
            "train_loss": state.epoch_loss / max(state.epoch_seen, 1),
            "examples_per_s": state.epoch_seen / max(state.epoch_time, 1e-9),
            "time_s": state.epoch_time,
        }
        if annealing is not None:
            record["beta"] = beta[0]
        if stopped_inside:
            record.update(partial=True, batches=state.batch)
        else:
            state.epoch += 1
            state.batch, state.epoch_rng_state = 0, None
            state.epoch_loss, state.epoch_seen, state.epoch_time = 0.0, 0, 0.0
        if held_out is not None and (state.epoch % eval_every == 0 or done()) and main:
            eval_data = held_out.for_evaluation()
            # Evaluation draws its own noise without moving the training RNG, so where and
            # how often we evaluate never changes the trained parameters.
            rng = pyro.util.get_rng_state()
            if isinstance(loss, ELBO):
                record["test_elbo"] = evaluate_elbo(
                    model,
                    eval_data,
                    guide=guide,
                    batch_size=max(batch_size, 256),
                    loss=loss,
                    transform=transform,
                    plate_name=plate_name,
                )
            else:  # an adversarial or likelihood-free objective: no ELBO to report
                record["test_loss"] = _evaluate_loss(
                    prog, eval_data, loss, max(batch_size, 256), transform, device
                )
            pyro.util.set_rng_state(rng)
        if dp is not None:  # rank 0's record (its evaluation, its clock) everywhere
            record = dp.broadcast(record)
        if stopped_inside:
            partial = record
        else:
            state.history.append(record)
        if progress:
            shown = ", ".join(
                f"{k}={v:.4g}"
                for k, v in record.items()
                if isinstance(v, float | int) and not isinstance(v, bool) and k != "epoch"
            )
            tqdm.write(f"epoch {record['epoch']}: {shown}")

        def keep(record: dict[str, Any] = record) -> None:
            save()
            if ckpt_dir is not None and main:
                append_metrics(ckpt_dir / METRICS_NAME, record)

        stop = False
        if not stopped_inside and callbacks:
            # Callbacks run before the checkpoint, so that it holds what they changed (a
            # scheduler's step) and the random numbers they drew: a resume then continues
            # exactly where the uninterrupted run would. One that fails loses no training.
            try:
                stop = any([cb(record, model) is True for cb in callbacks])
            except BaseException:
                keep()
                raise
            if dp is not None:  # callbacks run on every rank; one asking to stop stops all
                stop = dp.any(stop)
            # A callback may change what the model reads (an annealed noise scale), which a
            # recorded step holds as a constant: the next step checks it against Pyro's.
            verify()
        keep()
        if stopped_inside or stop:
            break
    history = state.history + ([partial] if partial is not None else [])
    return FitResult(history, state.epoch, state.step)
