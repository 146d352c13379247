"""The losses of a group of steps read back to the host at once, and the error for a
non-finite one.
"""

from __future__ import annotations

import math

import torch


class NonFiniteLossError(FloatingPointError):
    """The loss or a gradient became NaN or infinite; that update was skipped."""


def _read_back(
    losses: list[torch.Tensor | tuple[torch.Tensor, ...]],
    first_step: int,
    weights: list[float] | None = None,
) -> float:
    """The sum of ``losses`` (the steps from ``first_step`` on), each times its weight
    (default 1), read back in one transfer.

    A step whose update was skipped on the device (non-finite loss or gradient) returns a
    non-finite loss. A loss of several terms (a tuple, as ReweightedWakeSleep's model and
    guide losses) counts by its first term, the model's; every term is checked.

    Raises:
        NonFiniteLossError: naming the first step whose loss was NaN or infinite, counted
            from 1 (the first step of the run is step 1, as ``metrics.jsonl`` counts them).
    """
    # A plain Pyro step's loss is on the CPU and a recorded step's on the data's device: bring
    # them to the last one's device, then read once (the read waits for the device anyway).
    steps = [l if isinstance(l, tuple) else (l,) for l in losses]
    device = steps[-1][0].device
    flat = [t.detach().reshape(()).double().to(device) for terms in steps for t in terms]
    values = iter(torch.stack(flat).tolist())
    read = [[next(values) for _ in terms] for terms in steps]
    for i, terms in enumerate(read):
        if not all(map(math.isfinite, terms)):
            value = terms[0] if len(terms) == 1 else tuple(terms)
            raise NonFiniteLossError(
                f"the loss or a gradient became non-finite at step {first_step + i + 1} (loss "
                f"{value}); that update was skipped and the parameters are finite. Lower the "
                "learning rate, set grad_clip, or check the data"
            )
    weights = weights if weights is not None else [1.0] * len(read)
    return math.fsum(terms[0] * w for terms, w in zip(read, weights, strict=True))
