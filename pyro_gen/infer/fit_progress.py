"""Where ``fit``'s training stands (what a checkpoint records of it), and when it is done."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pyro_gen.infer.fit_layout import Layout


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
    # The states of the data loader's own generators (``DataLoader(generator=)``, a sampler's
    # ``generator=``; uint8 tensors) at the start of the epoch in progress, or of the next one
    # at an epoch's end. None: tensor data, or a checkpoint written before they were kept.
    loader_generator_states: list[torch.Tensor] | None = None
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


def _finished(progress: _Progress, epochs: int | None, steps: int | None) -> bool:
    return (epochs is not None and progress.epoch >= epochs) or (
        steps is not None and progress.step >= steps
    )
