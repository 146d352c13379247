"""A VAE with KL annealing written inline, as Pyro's ``examples/dmm.py`` does it: the
latent site sits under ``poutine.scale(scale=annealing_factor)`` in both model and guide,
and the user's loop passes the factor with each minibatch, growing it step by step.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from tests.user_programs.vae import VAE


class AnnealedVAE(VAE):
    """:class:`~tests.user_programs.vae.VAE` with the latent's terms scaled by the
    ``annealing_factor`` argument (1 is the plain ELBO)."""

    def model(self, x: torch.Tensor, annealing_factor: float = 1.0) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=annealing_factor):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.z_dim]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, annealing_factor: float = 1.0) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            with poutine.scale(scale=annealing_factor):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def annealed_batches(x: torch.Tensor, batch_size: int, state: dict[str, int]):
    """One epoch of ``{"x", "annealing_factor"}`` batches; the factor rises linearly with
    the step count kept in ``state`` (the example's ``min_af + (1 - min_af) * step / N``)."""
    for i in range(0, x.shape[0], batch_size):
        state["step"] += 1
        factor = min(1.0, 0.1 + 0.9 * state["step"] / 20)
        yield {"x": x[i : i + batch_size], "annealing_factor": factor}
