"""The one training loop: SVI over any model/guide pair that follows the pyro_gen protocol."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import pyro.util
import torch
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.util import zero_grads
from tqdm.auto import tqdm

from pyro_gen.data.batching import Batch, DeviceBatches
from pyro_gen.infer.annealing import kl_scale
from pyro_gen.infer.checkpoint import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    append_metrics,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    write_metrics,
)
from pyro_gen.infer.compiled import CompiledSVI, supports
from pyro_gen.infer.evaluation import evaluate_elbo, module_device

logger = logging.getLogger("pyro_gen")

Callback = Callable[[dict[str, Any], torch.nn.Module], Any]
StepCallback = Callable[[int, torch.nn.Module], Any]

# Steps between host read-backs of the loss. Reading a CUDA loss back stalls the host until
# the device has caught up, so the loop reads losses in groups, for the progress bar and the
# NaN check, and never once per step.
READBACK_EVERY = 20


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the parameters were not updated with it."""


@dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch records and where training stopped."""

    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    step: int = 0


def _as_dict(batch: Batch) -> dict[str, torch.Tensor]:
    return dict(batch) if isinstance(batch, Mapping) else {"x": batch}


class _SVIStep:
    """One SVI step, as :class:`pyro.infer.SVI` does it, with a finite-loss check and
    gradient clipping placed between the gradient and the update."""

    def __init__(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        optim: pyro.optim.PyroOptim,
        loss: ELBO,
        grad_clip: float | None,
    ) -> None:
        self.model, self.guide, self.optim, self.loss, self.grad_clip = (
            model,
            guide,
            optim,
            loss,
            grad_clip,
        )

    def __call__(self, step: int, **batch: torch.Tensor) -> torch.Tensor:
        with pyro.poutine.trace(param_only=True) as param_capture:
            loss = self.loss.loss_and_grads(self.model, self.guide, **batch)
        params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
        loss = float(loss)
        if not math.isfinite(loss):
            zero_grads(params)
            raise NonFiniteLossError(
                f"loss became {loss} at step {step}; parameters were left at their last "
                "finite values. Lower the learning rate, set grad_clip, or check the data"
            )
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(list(params), self.grad_clip)
        self.optim(params)
        zero_grads(params)
        return torch.tensor(loss)


def _read_back(losses: list[torch.Tensor], first_step: int) -> float:
    """The sum of ``losses`` (the steps from ``first_step`` on), read back in one transfer.

    Raises:
        NonFiniteLossError: naming the first step whose loss was NaN or infinite.
    """
    values = torch.stack([loss.detach().reshape(()).double() for loss in losses]).tolist()
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"loss became {value} at step {first_step + i}; that update was skipped and the "
                "parameters are finite. Lower the learning rate, set grad_clip, or check the data"
            )
    return math.fsum(values)


def fit(
    gen_model: torch.nn.Module,
    data: Batch,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    optim: pyro.optim.PyroOptim | None = None,
    loss: ELBO | None = None,
    device: torch.device | str | None = None,
    annealing: Callable[[int], float] | None = None,
    grad_clip: float | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    eval_data: Batch | None = None,
    eval_every: int = 1,
    checkpoint_dir: str | Path | None = None,
    callbacks: Iterable[Callback] = (),
    step_callbacks: Iterable[StepCallback] = (),
    progress: bool = True,
    compile: bool | None = None,
) -> FitResult:
    """Trains ``gen_model.model`` / ``gen_model.guide`` with stochastic variational inference.

    Each step maximises the ELBO (or whichever Pyro ``loss`` is given) on one minibatch:

    .. math::

        \\mathcal{L}(\\theta, \\phi) = \\mathbb{E}_{q_\\phi(z \\mid x)}
            [\\log p_\\theta(x, z) - \\log q_\\phi(z \\mid x)] \\le \\log p_\\theta(x).

    The dataset is moved to ``device`` once and sliced there. After every epoch the loop
    appends a record to ``checkpoint_dir/metrics.jsonl`` and atomically rewrites
    ``checkpoint_dir/checkpoint.pt`` (module, optimizer, param store, RNG states, progress).
    If that checkpoint exists when ``fit`` starts, training resumes from it exactly: two
    epochs in one call give the same parameters as one epoch, a resume, and one more.

    Args:
        gen_model: a module with ``model(x=None, **context)`` and ``guide(...)``.
        data: a tensor of examples (passed as ``x``), or a dict of tensors passed by name.
        epochs: number of passes over ``data`` (total, counting resumed ones).
        steps: alternatively, the total number of optimisation steps.
        batch_size: examples per step.
        optim: a :class:`pyro.optim.PyroOptim`; default Adam with learning rate 1e-3.
        loss: a Pyro ELBO; default :class:`~pyro.infer.Trace_ELBO`.
        device: where model and data live during training; default the model's device.
        annealing: ``step -> beta`` applied to latent sites only (KL warm-up), e.g.
            :class:`~pyro_gen.infer.LinearAnnealing`.
        grad_clip: clip the global gradient norm to this value.
        transform: applied on the device to each batch's ``x`` (e.g. dynamic binarization).
        eval_data: held-out data; its ELBO per example is recorded as ``test_elbo``.
        eval_every: evaluate every this many epochs.
        checkpoint_dir: where checkpoints and metrics go; None keeps nothing on disk.
        callbacks: ``callback(record, gen_model)`` after each epoch; returning True stops.
        step_callbacks: ``callback(step, gen_model)`` after each optimisation step, ``step``
            counting the steps taken so far; for updates that must follow the optimizer,
            such as an exponential moving average of the weights, rather than sit inside
            ``model`` (where they would also stop the compiled step from applying).
        progress: show a progress bar with the loss and examples per second.
        compile: ``None`` (default) runs the compiled ELBO step of
            :class:`~pyro_gen.infer.compiled.CompiledSVI` where the loss supports it
            (TorchScript at once; on CUDA, Inductor with CUDA graphs after 500 steps);
            ``True`` compiles with Inductor
            from the start; ``False`` runs plain Pyro ``SVI`` steps.

    Returns:
        A :class:`FitResult` with one record per epoch.

    Raises:
        NonFiniteLossError: when a step's loss is NaN or infinite; it is raised at the next
            read-back of the loss (every ``READBACK_EVERY`` steps and at the end of each
            epoch, before any checkpoint is written), so the last checkpoint on disk is left
            as it was. The update of the non-finite step is skipped.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> class Mean(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.loc = torch.nn.Parameter(torch.zeros(()))
        ...     def model(self, x):
        ...         pyro.module("mean", self)
        ...         with pyro.plate("data", x.shape[0]):
        ...             pyro.sample("obs", dist.Normal(self.loc, 1.0), obs=x)
        ...     def guide(self, x):
        ...         pass
        >>> m = Mean()
        >>> result = fit(m, torch.full((64,), 3.0), epochs=100, batch_size=64,
        ...              optim=pyro.optim.Adam({"lr": 0.1}), progress=False)
        >>> round(m.loc.item())
        3
    """
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    for name, value in (("epochs", epochs), ("steps", steps)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")

    device = torch.device(device) if device is not None else module_device(gen_model)
    gen_model.to(device)
    batches = DeviceBatches(data, batch_size, shuffle=True, device=device)
    optim = optim if optim is not None else pyro.optim.Adam({"lr": 1e-3})
    loss = loss if loss is not None else Trace_ELBO()
    callbacks, step_callbacks = list(callbacks), list(step_callbacks)

    # Stale entries under the same names would silently detach the module's parameters
    # from the ones SVI updates, so every run starts from an empty store.
    pyro.clear_param_store()
    beta = [1.0]
    model, guide = gen_model.model, gen_model.guide
    if annealing is not None:
        model, guide = kl_scale(model, lambda: beta[0]), kl_scale(guide, lambda: beta[0])
    if compile is False or not supports(loss):
        step_fn: Callable[..., float] = _SVIStep(model, guide, optim, loss, grad_clip)
    else:
        # The compiled program falls back to plain Pyro by itself (one log line saying why)
        # when the model's structure changes between steps or a site is unsupported.
        step_fn = CompiledSVI(
            model,
            guide,
            optim,
            loss,
            grad_clip=grad_clip,
            backend="inductor" if compile else "auto",
        )

    result = FitResult()
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if (ckpt_dir / CHECKPOINT_NAME).exists():
            ckpt = load_checkpoint(ckpt_dir / CHECKPOINT_NAME, map_location=device)
            # Parameters must exist in the store before the optimizer state can attach.
            progress_state = restore_checkpoint(ckpt, gen_model, optim)
            result = FitResult(
                list(progress_state["history"]), progress_state["epoch"], progress_state["step"]
            )
            write_metrics(ckpt_dir / METRICS_NAME, result.history)

    def done() -> bool:
        return (epochs is not None and result.epoch >= epochs) or (
            steps is not None and result.step >= steps
        )

    while not done():
        gen_model.train()
        start, total_loss, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(
            batches,
            total=len(batches),
            desc=f"epoch {result.epoch + 1}",
            disable=not progress,
            leave=False,
        )
        pending: list[torch.Tensor] = []
        for i, batch in enumerate(bar):
            batch = _as_dict(batch)
            if transform is not None:
                batch["x"] = transform(batch["x"])
            if annealing is not None:
                beta[0] = float(annealing(result.step))
            pending.append(step_fn(result.step, **batch))
            n = batch["x"].shape[0] if "x" in batch else next(iter(batch.values())).shape[0]
            seen += n
            result.step += 1
            for step_callback in step_callbacks:
                step_callback(result.step, gen_model)
            last = i + 1 == len(batches) or (steps is not None and result.step >= steps)
            if len(pending) == READBACK_EVERY or last:
                total_loss += _read_back(pending, result.step - len(pending))
                pending = []
                rate = seen / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{total_loss / seen:.3f}", ex_per_s=f"{rate:.0f}")
            if last:
                break
        bar.close()
        result.epoch += 1
        elapsed = time.perf_counter() - start
        record: dict[str, Any] = {
            "epoch": result.epoch,
            "step": result.step,
            "train_loss": total_loss / max(seen, 1),
            "examples_per_s": seen / elapsed,
            "time_s": elapsed,
        }
        if annealing is not None:
            record["beta"] = beta[0]
        if eval_data is not None and (result.epoch % eval_every == 0 or done()):
            # Evaluation draws its own noise without moving the training RNG, so where and
            # how often we evaluate never changes the trained parameters.
            rng = pyro.util.get_rng_state()
            record["test_elbo"] = evaluate_elbo(
                gen_model,
                eval_data,
                batch_size=max(batch_size, 256),
                loss=loss,
                transform=transform,
            )
            pyro.util.set_rng_state(rng)
        result.history.append(record)
        if progress:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
            tqdm.write(f"epoch {result.epoch}: {shown}")
        if ckpt_dir is not None:
            progress_state = {"epoch": result.epoch, "step": result.step, "history": result.history}
            save_checkpoint(ckpt_dir / CHECKPOINT_NAME, gen_model, optim, progress_state)
            append_metrics(ckpt_dir / METRICS_NAME, record)
        stop_requests = [cb(record, gen_model) is True for cb in callbacks]
        if any(stop_requests):
            break
    return result
