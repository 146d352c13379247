"""``fit``'s training loop: epochs of steps, loss read-backs, evaluation, callbacks and
checkpoints.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import pyro.util
import torch
from pyro.infer import ELBO
from tqdm.auto import tqdm

from pyro_gen.data.batching import BatchCalls, Call, IterableBatches, Transform, with_transform
from pyro_gen.data.random_state import rng_left_alone
from pyro_gen.infer.annealing import checked_weight
from pyro_gen.infer.callbacks import only_tensors
from pyro_gen.infer.checkpoint import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    append_metrics,
    save_checkpoint,
)
from pyro_gen.infer.distributed import DataParallel, ShardedBatches, rng_state, set_rng_state
from pyro_gen.infer.evaluation import evaluate_elbo
from pyro_gen.infer.fit_held_out import _evaluate_loss
from pyro_gen.infer.fit_progress import _finished, _Progress
from pyro_gen.infer.fit_read_back import NonFiniteLossError, _read_back
from pyro_gen.infer.fit_result import FitResult
from pyro_gen.infer.held_out import HeldOutData, evaluates_after
from pyro_gen.infer.module_modes import module_modes, restore_modes
from pyro_gen.infer.program import Program

logger = logging.getLogger("pyro_gen")

Callback = Callable[[dict[str, Any], Any], Any]
StepCallback = Callable[[int, Any], Any]

# Steps between host read-backs of the loss. Reading a CUDA loss back stalls the host until
# the device has caught up, so the loop reads losses in groups, for the progress bar and the
# NaN check, and never once per step.
READBACK_EVERY = 20


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
    represented: int | None,
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

    # The user's loader, whose own generators (if any) checkpoints keep beside the global RNG.
    inner = batches.inner if isinstance(batches, ShardedBatches) else batches
    loader = inner if isinstance(inner, IterableBatches) else None
    if loader is not None:
        # Resuming: the generators as at the recorded epoch's start (after fit's peek at
        # the first batch, which drew from them and put them back). None: nothing to restore.
        loader.restore_generator_states(state.loader_generator_states)

    def save() -> None:
        if dp is not None:
            dp.sync_buffers(prog.modules)
            if ckpt_dir is not None:
                state.rank_streams = dp.gather_streams()
        if loader is not None and state.batch == 0:  # the next epoch's start
            state.loader_generator_states = loader.generator_states()
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
    step_stop = False  # a step callback asked to stop
    modes = module_modes(prog.modules.values())
    while not done():
        # Each epoch trains in the modes the user gave (a frozen decoder.eval() stays so,
        # as in Pyro's loop), whatever an evaluation or a callback switched them to. A loss
        # object whose mode gates what it trains (an adversarial loss's discriminator steps)
        # refuses a training call in eval mode itself, the same under Pyro's SVI: fit does not
        # switch it (pyro_gen.gan.loss_object.PyroLoss._training_call says why).
        restore_modes(modes)
        # Tensor data on CUDA draw their order from the CUDA generator: it is recorded too.
        if state.batch == 0:
            state.epoch_rng_state = rng_state(device)
            if loader is not None:
                state.loader_generator_states = loader.generator_states()
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
        # Each step's share of train_loss, the loss per example: its examples over those its
        # loss stands for (a subsampling data plate's full size; else the batch's own).
        weights: list[float] = []

        def read_back(start: float = start) -> None:
            nonlocal pending, weights
            if pending:
                try:
                    first = state.step - len(pending)
                    state.epoch_loss += _read_back(pending, first, weights)
                except NonFiniteLossError:
                    # A batch that failed one of the model's input checks on the device
                    # also reads back NaN: raise the model's own error for it instead.
                    step_fn.check()
                    raise
                pending, weights = [], []
            state.epoch_time = time.perf_counter() - start

        stopped_inside = False
        for call, examples in bar:
            prog.check_call(call, state.batch)
            call = with_transform(call, transform)
            if annealing is not None:
                weight = annealing(state.step)
                beta[0] = checked_weight(weight, "annealing returned", f" at step {state.step}")
            if dp is not None:
                dp.begin_step(call.size if call.size is not None else 1, examples)
            pending.append(step_fn(state.step, *call.args, **call.kwargs))
            weights.append(examples / represented if represented else 1.0)
            state.epoch_seen += examples
            state.step += 1
            state.batch += 1
            # A callback returning True stops training after this step (all of them run).
            asked = [step_callback(state.step, model) is True for step_callback in step_callbacks]
            if any(asked):
                if dp is not None:
                    # Each process would stop at another step; a collective each step to agree
                    # costs every step of every run.
                    raise ValueError(
                        "a step callback returned True (stop) under data-parallel training, "
                        "which stops only at an epoch's end: return True from an epoch "
                        "callback (callbacks=) instead"
                    )
                step_stop = True
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
            if step_stop or (steps is not None and state.step >= steps):
                stopped_inside = total is None or state.batch < total
                if not stopped_inside:
                    # Read on to the pass's end, as an uninterrupted loop does: a sampler
                    # draws as it runs out (RandomSampler's next permutation, from a
                    # generator of the loader's own), and the checkpoint holds the states
                    # that the next epoch starts from.
                    next(iter(epoch_batches), None)
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
        # A stop asked inside an epoch is quick (a scheduler's grace period): no evaluation of
        # a partial epoch; the resumed run evaluates where the uninterrupted one does.
        evaluate = not (step_stop and stopped_inside)
        if (
            held_out is not None
            and evaluate
            and evaluates_after(state.epoch, eval_every, done())
            and main
        ):
            eval_data = held_out.for_evaluation()
            # Evaluation draws its own noise without moving the training RNG, so where and
            # how often we evaluate never changes the trained parameters.
            with rng_left_alone():
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
                        prog, held_out, eval_data, loss, max(batch_size, 256), transform, device
                    )
        if dp is not None:  # rank 0's record (its evaluation, its clock) everywhere
            record = dp.broadcast(record)
        for key in ("test_elbo", "test_loss"):
            if key in record and not math.isfinite(record[key]):
                # Parameters that give held-out data a non-finite score have diverged: this
                # epoch is neither recorded nor checkpointed, so the last good one is kept
                # (and metrics.jsonl stays JSON, which has no NaN).
                raise NonFiniteLossError(
                    f"the held-out {key} is {record[key]} after epoch {record['epoch']} though "
                    "the training loss stayed finite: the parameters diverged (lower the "
                    "learning rate or set grad_clip), or the held-out data hold values the "
                    "training data do not. This epoch was not recorded or checkpointed; the "
                    "last checkpoint is kept"
                )
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
        if stopped_inside or stop or step_stop:
            break
    history = state.history + ([partial] if partial is not None else [])
    return FitResult(history, state.epoch, state.step)
