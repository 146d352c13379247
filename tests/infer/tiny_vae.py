"""A minimal VAE used to exercise the training loop without depending on pyro_gen.vae."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch


class TinyVAE(torch.nn.Module):
    def __init__(self, x_dim: int = 6, z_dim: int = 2, hidden: int = 8) -> None:
        super().__init__()
        self.z_dim = z_dim  # the decoder adds pyro.param("logit_shift"), kept in the param store
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(x_dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2 * z_dim)
        )
        self.decoder = torch.nn.Sequential(
            torch.nn.Linear(z_dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, x_dim)
        )

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        shift = pyro.param("logit_shift", torch.zeros(x.shape[-1], device=x.device))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            logits = self.decoder(z) + shift
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        loc, log_scale = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    def sample(self, num_samples: int) -> torch.Tensor:
        z = torch.randn(num_samples, self.z_dim)
        return torch.sigmoid(self.decoder(z) + pyro.param("logit_shift"))


def binary_data(n: int = 96, x_dim: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(3, x_dim, generator=g) > 0.5).float()
    idx = torch.randint(0, 3, (n,), generator=g)
    flips = (torch.rand(n, x_dim, generator=g) < 0.1).float()
    return (prototypes[idx] + flips) % 2
