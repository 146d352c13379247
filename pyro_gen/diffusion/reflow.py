"""Reflow (Liu et al.'s rectified flow, repeated): couple base draws with the current flow's
images of them, and train a fresh flow on those pairs to straighten its paths.

References:
    Liu, Gong, Liu. Flow Straight and Fast: Learning to Generate and Transfer Data with
    Rectified Flow. ICLR 2023, arXiv:2209.03003.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pyro_gen.diffusion.flow_matching import FlowMatching, base_draws

__all__ = ["reflow_pairs"]


def reflow_pairs(
    fm: FlowMatching,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
    **solver: Any,
) -> tuple[Tensor, Tensor]:
    """Couplings ``(x, z)`` for one reflow round of rectified flow: base draws ``z`` and the
    current flow's images ``x`` of them. Train a fresh ``FlowMatching(...,
    objective="rectified")`` on ``fit(fm2, (x, z))`` to straighten the paths (Liu et al.).

    Example:
        >>> from pyro_gen.transforms.continuous import cnf
        >>> x, z = reflow_pairs(FlowMatching(cnf(2, (8,)), objective="rectified"), 4)
        >>> x.shape, z.shape
        (torch.Size([4, 2]), torch.Size([4, 2]))
    """
    z = base_draws(fm, num_samples, generator)
    return fm.transport(z, **solver), z
