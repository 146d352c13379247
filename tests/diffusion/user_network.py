"""The small network of the diffusion user-program tests: what a user writes for ``net(x, t)``
on vectors of size 2, float32 as built."""

from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    """A user's network ``net(x, t)``: one linear layer of the vector and the time."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype).expand(x.shape[:1])[:, None]
        return self.lin(torch.cat([x, t], -1))
