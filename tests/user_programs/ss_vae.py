"""A semi-supervised VAE (Kingma et al.'s M2, as in Pyro's ``examples/vae/ss_vae_M2.py``):
a class label ``y`` that is observed on labelled batches and a latent summed out by
``TraceEnum_ELBO`` on unlabelled ones, plus the supervised auxiliary classification loss.

The model marks ``y`` with ``infer={"enumerate": "parallel"}``, so a guide that leaves ``y``
out (an autoguide over ``z`` alone) is also valid: ``TraceEnum_ELBO`` then sums ``y`` out in
the model. The hand-written guide samples ``y`` from the classifier, enumerated, as Pyro's
example does.

References:
    Kingma, Rezende, Mohamed, Welling, "Semi-Supervised Learning with Deep Generative
    Models", arXiv:1406.5298.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

X_DIM, Y_DIM = 12, 3


def clusters(
    num_labelled: int = 24, num_unlabelled: int = 120, num_test: int = 60, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Binary vectors from three class prototypes with 10% of the bits flipped."""
    g = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(Y_DIM, X_DIM, generator=g) < 0.5).float()
    n = num_labelled + num_unlabelled + num_test
    labels = torch.randint(0, Y_DIM, (n,), generator=g)
    flips = (torch.rand(n, X_DIM, generator=g) < 0.1).float()
    xs = (prototypes[labels] + flips) % 2
    ys = nn.functional.one_hot(labels, Y_DIM).float()
    a, b = num_labelled, num_labelled + num_unlabelled
    return {
        "xs_sup": xs[:a],
        "ys_sup": ys[:a],
        "xs_unsup": xs[a:b],
        "xs_test": xs[b:],
        "ys_test": ys[b:],
    }


def semi_supervised_batches(data: dict[str, torch.Tensor], batch_size: int = 24):
    """One epoch as the user writes it: each labelled batch followed by unlabelled ones.

    Yields dicts: ``{"xs", "ys"}`` for labelled batches, ``{"xs"}`` for unlabelled ones
    (``ys`` defaults to None in the model and guide).
    """
    for i in range(0, data["xs_sup"].shape[0], batch_size):
        yield {"xs": data["xs_sup"][i : i + batch_size], "ys": data["ys_sup"][i : i + batch_size]}
    for i in range(0, data["xs_unsup"].shape[0], batch_size):
        yield {"xs": data["xs_unsup"][i : i + batch_size]}


def _cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Under enumeration y gains leading dims that z lacks (and vice versa under particles).
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])], -1)


class SSVAE(nn.Module):
    """``y ~ Cat(uniform)``, ``z ~ N(0, I)``, ``x | y, z ~ Bernoulli(decoder(y, z))``."""

    def __init__(
        self,
        z_dim: int = 2,
        hidden_dim: int = 24,
        aux_loss_multiplier: float = 20.0,
        enumerate_label: bool = True,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.aux_loss_multiplier = aux_loss_multiplier
        # A user who forgets the annotation gets a y that nothing enumerates or guides.
        self.label_infer = {"enumerate": "parallel"} if enumerate_label else {}
        self.decoder = nn.Sequential(
            nn.Linear(z_dim + Y_DIM, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, X_DIM)
        )
        self.encoder_y = nn.Sequential(
            nn.Linear(X_DIM, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, Y_DIM)
        )
        self.encoder_z = nn.Sequential(
            nn.Linear(X_DIM + Y_DIM, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, 2 * z_dim)
        )

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        pyro.module("ss_vae", self)
        batch_size = xs.shape[0]
        with pyro.plate("data", batch_size):
            prior_loc = xs.new_zeros(batch_size, self.z_dim)
            z = pyro.sample("z", dist.Normal(prior_loc, torch.ones_like(prior_loc)).to_event(1))
            label_probs = xs.new_full((batch_size, Y_DIM), 1.0 / Y_DIM)
            ys_ = pyro.sample(
                "y", dist.OneHotCategorical(label_probs), obs=ys, infer=self.label_infer
            )
            logits = self.decoder(_cat(z, ys_))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)
            if ys is not None:
                # The auxiliary loss of M2: the classifier also learns from the labels directly.
                with poutine.scale(scale=self.aux_loss_multiplier):
                    pyro.sample("y_aux", dist.OneHotCategorical(logits=self.encoder_y(xs)), obs=ys)

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                logits = self.encoder_y(xs)
                ys = pyro.sample(
                    "y", dist.OneHotCategorical(logits=logits), infer={"enumerate": "parallel"}
                )
            loc, log_scale = self.encoder_z(_cat(xs, ys)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    @torch.no_grad()
    def accuracy(self, xs: torch.Tensor, ys: torch.Tensor) -> float:
        """Fraction of ``xs`` whose most probable class under the classifier is ``ys``'s."""
        return (self.encoder_y(xs).argmax(-1) == ys.argmax(-1)).float().mean().item()


class FlowGuide(nn.Module):
    """A guide for ``z`` alone (``y`` left to the ELBO's enumeration in the model): a Normal
    from ``x`` pushed through inverse autoregressive flow layers."""

    def __init__(self, iafs: list[nn.Module], z_dim: int = 2, hidden_dim: int = 24) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(X_DIM, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, 2 * z_dim)
        )
        self.iafs = nn.ModuleList(iafs)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        pyro.module("ss_flow_guide", self)
        with pyro.plate("data", xs.shape[0]):
            loc, log_scale = self.net(xs).chunk(2, -1)
            base = dist.Normal(loc, log_scale.exp()).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, list(self.iafs)))
