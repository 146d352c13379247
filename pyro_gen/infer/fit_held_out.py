"""``fit``'s held-out data: checked before training, and scored by a loss that is not an ELBO."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from pyro.infer import ELBO

from pyro_gen.data.batching import Transform, batch_calls, with_transform
from pyro_gen.data.random_state import rng_left_alone
from pyro_gen.infer.evaluation import declared_plate
from pyro_gen.infer.fit_progress import _Progress
from pyro_gen.infer.held_out import HeldOutData, evaluations
from pyro_gen.infer.log_weights import check_guide_plates, find_data_plate
from pyro_gen.infer.loss_value import reported_loss, subsampled_size
from pyro_gen.infer.module_modes import module_modes, restore_modes
from pyro_gen.infer.program import Program, trace_once


def _evaluate_loss(
    prog: Program,
    held_out: HeldOutData,
    data: Any,
    loss: Any,
    batch_size: int,
    transform: Transform | None,
    device: torch.device,
) -> float:
    """A loss's value per example on held-out ``data`` (modules in eval mode), the batches
    moved to the training ``device``, counted as ``train_loss`` counts it: where the data
    plate subsamples, a batch's value stands for the plate's full size
    (``held_out.represented``; Pyro scales a batch of B by N / B).

    A loss object is read through its ``loss``, without a graph. A callable loss, as
    ``SVI`` takes one (``simple_elbo``, ``TraceEnum_ELBO().differentiable_loss``), returns a
    differentiable tensor and may refuse to run without autograd: it runs with gradients
    enabled and its value is read off (no backward pass, nothing reaches ``.grad``)."""
    modes = module_modes(prog.modules.values())
    for m in prog.modules.values():
        m.eval()
    if hasattr(loss, "loss_and_grads"):
        evaluate, autograd = loss.loss, torch.no_grad()
    else:
        evaluate, autograd = loss, torch.enable_grad()
    represented = held_out.represented
    total, seen = 0.0, 0
    try:
        for call in batch_calls(data, batch_size, shuffle=False, device=device):
            call = with_transform(call, transform)
            with autograd:
                value = reported_loss(evaluate(prog.model, prog.guide, *call.args, **call.kwargs))
            examples = call.size if call.size is not None else 1
            total += value * (examples / represented if represented else 1.0)
            seen += examples
    finally:
        restore_modes(modes)
    return total / max(seen, 1)


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
    evaluation) and the model traced on it: for an ELBO, the plate evaluate_elbo will score
    by is found; for another loss, how many examples a batch's value stands for."""
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
    with rng_left_alone():  # the check's transform draws nothing training would see
        first = with_transform(held_out.first, transform)
    guide_trace, model_trace = trace_once(prog, first)
    plate = plate_name or declared_plate(model)
    if isinstance(loss, ELBO):
        check_guide_plates(
            model_trace, guide_trace, find_data_plate(model_trace, plate, first.size)
        )
    else:  # evaluate_elbo finds the plate itself; another loss is counted by it here
        held_out.represented = subsampled_size(model_trace, plate)
    return held_out
