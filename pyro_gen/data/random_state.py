"""The process-wide random state: what Pyro's ``get_rng_state`` holds (torch's CPU generator,
Python's ``random``, numpy's) plus every CUDA generator once CUDA is in use, where a GPU's
shuffle orders and model noise are drawn. Checkpoints record it; reading the user's first
batch puts it back (:mod:`pyro_gen.data.batching`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyro.util
import torch


def global_rng_state() -> dict[str, Any]:
    """:func:`pyro.util.get_rng_state`, plus ``"cuda"`` (every CUDA generator) once CUDA is
    initialized.

    Example:
        >>> state = global_rng_state()
        >>> a = torch.rand(2); set_global_rng_state(state); torch.equal(a, torch.rand(2))
        True
    """
    state = pyro.util.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restores :func:`global_rng_state`. The torch state may have been loaded onto a device
    (``map_location="cuda"``); the CUDA generators are restored when there are as many
    devices (a run resumed on another machine continues with that machine's GPU noise)."""
    set_pyro_rng_state(state)
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def set_pyro_rng_state(state: dict[str, Any]) -> None:
    """:func:`pyro.util.set_rng_state` for a state whose torch generator state may have been
    loaded onto a device (``map_location="cuda"``); keys other than Pyro's are ignored."""
    pyro.util.set_rng_state(
        {"torch": state["torch"].cpu(), "random": state["random"], "numpy": state["numpy"]}
    )


def same_rng_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`global_rng_state` values are equal."""
    cuda_a, cuda_b = a.get("cuda", []), b.get("cuda", [])
    return (
        torch.equal(a["torch"], b["torch"])
        and a["random"] == b["random"]
        and all(np.array_equal(u, v) for u, v in zip(a["numpy"], b["numpy"]))
        and len(cuda_a) == len(cuda_b)
        and all(torch.equal(u, v) for u, v in zip(cuda_a, cuda_b))
    )


@contextmanager
def rng_left_alone() -> Iterator[None]:
    """A block whose random draws the caller does not see: :func:`global_rng_state` (CUDA's
    generators included, where a transform on a GPU batch draws) is put back after it,
    raising or not.

    Example:
        >>> with rng_left_alone():
        ...     a = torch.rand(2)
        >>> torch.equal(a, torch.rand(2))  # the caller draws what the block drew
        True
    """
    state = global_rng_state()
    try:
        yield
    finally:
        set_global_rng_state(state)
