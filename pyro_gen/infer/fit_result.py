"""What :func:`~pyro_gen.infer.fit` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
