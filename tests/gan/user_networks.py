"""The small networks a user's own GAN program in these tests is built from: a two-layer
MLP and a discriminator that gives one score per example and has no attributes pyro_gen
reads."""

from __future__ import annotations

import torch
from torch import nn


def mlp(n_in: int, n_out: int, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, 8), nn.Tanh(), nn.Linear(8, n_out)).to(dtype)


class Critic(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.net = mlp(2, 1, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
