"""A training budget for the benchmarks: a ``fit`` step callback that decays the learning
rate over the budget and ends training, mid-epoch if need be, once it is spent. Wall-clock by
default; ``clock=time.thread_time`` counts this thread's CPU seconds, which buy about the same
training on a machine shared by other processes."""

from __future__ import annotations

import time
from collections.abc import Callable

import pyro
import torch

from pyro_gen.infer.callbacks import changes_only_tensors


class BudgetSpent(Exception):
    """Raised by the step callback to end ``fit`` mid-epoch once the budget is spent."""


def budget(
    optim: pyro.optim.PyroOptim,
    lr0: float,
    final: float,
    seconds: float,
    counter: dict,
    clock: Callable[[], float] = time.perf_counter,
):
    """Step callback: lr = lr0 * final**(elapsed / budget); raises BudgetSpent at the end.

    Checked every step, not every epoch, so a large training set does not overrun the budget;
    ``counter["steps"]`` holds the steps taken.
    """
    start = clock()

    @changes_only_tensors  # a learning rate and a clock: no check of the recorded step
    def callback(step: int, model: torch.nn.Module) -> None:
        counter["steps"] = step
        frac = (clock() - start) / seconds
        if frac >= 1.0:
            raise BudgetSpent
        for opt in optim.optim_objs.values():
            # CompiledSVI's fused Adam stands behind a per-parameter view (.optimizer_)
            for group in getattr(opt, "optimizer_", opt).param_groups:
                group["lr"] = lr0 * final**frac

    return callback
