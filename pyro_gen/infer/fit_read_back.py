"""The losses of a group of steps read back to the host at once, and the error for a
non-finite one.
"""

from __future__ import annotations

import math

import torch


class NonFiniteLossError(FloatingPointError):
    """The loss or a gradient became NaN or infinite; that update was skipped."""


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
