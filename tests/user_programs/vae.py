"""A VAE as in Pyro's ``examples/vae``: an inline standard Normal prior, networks registered
with ``pyro.module``, binarized 8x8 digits. The guides below are the ones a user swaps in
without touching :meth:`VAE.model`."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_gen.data import load, static_binarize

X_DIM = 64


def digits(num_train: int = 256, num_test: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Binarized 8x8 digits flattened to 64 pixels: (train, test), each a fixed draw."""
    x_train, _ = load("digits", "train")
    x_test, _ = load("digits", "test")
    x_train = static_binarize(x_train[:num_train].float() / 16, seed=0)
    x_test = static_binarize(x_test[:num_test].float() / 16, seed=1)
    return x_train.reshape(-1, X_DIM), x_test.reshape(-1, X_DIM)


class Encoder(nn.Module):
    def __init__(self, z_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(X_DIM, hidden_dim), nn.Softplus())
        self.loc = nn.Linear(hidden_dim, z_dim)
        self.scale = nn.Linear(hidden_dim, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(x)
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-4


class VAE(nn.Module):
    """``z ~ N(0, I)``, ``x | z ~ Bernoulli(decoder(z))``, with an amortized Normal guide."""

    def __init__(self, z_dim: int = 4, hidden_dim: int = 32) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, X_DIM)
        )
        self.encoder = Encoder(z_dim, hidden_dim)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(x.shape[0], self.z_dim)
            z = pyro.sample("z", dist.Normal(z_loc, torch.ones_like(z_loc)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class FlowGuide(nn.Module):
    """The encoder's Normal pushed through inverse autoregressive flow layers.

    Args:
        encoder: maps ``x`` to a Normal's ``(loc, scale)``.
        iafs: transforms of ``z`` (e.g. pyro_gen's ``inverse_autoregressive``).
    """

    def __init__(self, encoder: nn.Module, iafs: list[nn.Module]) -> None:
        super().__init__()
        self.encoder = encoder
        self.iafs = nn.ModuleList(iafs)

    def forward(self, x: torch.Tensor) -> None:
        pyro.module("flow_guide", self)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            base = dist.Normal(loc, scale).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, list(self.iafs)))
