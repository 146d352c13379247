"""A conditional VAE as in Pyro's "cvae" tutorial: predict the hidden part of an image
from the part that is shown. The shown part ``xs`` has -1 where pixels are hidden; the
target ``ys`` has -1 where pixels are shown, so only the hidden pixels are observed (a mask
on the likelihood). The prior over ``z`` is conditioned on the input through a prior
network, which reads a pretrained deterministic baseline's guess of the hidden pixels:

.. math::

    z \\sim \\mathcal{N}(\\mu_p(x, \\hat y(x)), \\sigma_p(x, \\hat y(x))),\\quad
    y_j \\mid z \\sim \\operatorname{Bernoulli}(g_j(z)) \\text{ for each hidden pixel } j,

and the guide is a recognition network ``q(z | x, y)``. The data plate has no size (the
tutorial's ``pyro.plate("data")``): it takes it from the tensors inside.

References:
    Sohn, Lee, Yan, "Learning Structured Output Representation using Deep Conditional
    Generative Models", NeurIPS 2015.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from tests.user_programs.vae import X_DIM, digits

SIDE = 8


def shown_quadrant() -> torch.Tensor:
    """``(X_DIM,)`` booleans: the top-left 4x4 quadrant is shown, the rest hidden."""
    shown = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    shown[: SIDE // 2, : SIDE // 2] = True
    return shown.reshape(X_DIM)


def masked_digits(
    num_train: int = 256, num_test: int = 64
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((xs, ys) train, (xs, ys) test)`` from binarized digits, -1 marking what each
    tensor leaves out."""
    shown = shown_quadrant()

    def split(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs = torch.where(shown, images, torch.full_like(images, -1.0))
        ys = torch.where(shown, torch.full_like(images, -1.0), images)
        return xs, ys

    train, test = digits(num_train, num_test)
    return split(train), split(test)


def _fill_in(xs: torch.Tensor, guess: torch.Tensor) -> torch.Tensor:
    """``xs`` with its hidden pixels (-1) replaced by ``guess``."""
    return torch.where(xs == -1, guess, xs)


class BaselineNet(nn.Module):
    """A deterministic regression from the shown pixels to the hidden ones' probabilities."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(X_DIM, hidden), nn.ReLU(), nn.Linear(hidden, X_DIM), nn.Sigmoid()
        )

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        return self.net(xs)


def train_baseline(xs: torch.Tensor, ys: torch.Tensor, steps: int = 200) -> BaselineNet:
    """The tutorial's first stage: a plain torch loop, binary cross-entropy on the hidden
    pixels only; the network is then reused inside the CVAE's prior (and trained on with
    it, as the tutorial's ``pyro.module("generation_net", self)`` registers it too)."""
    net = BaselineNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    hidden = ys != -1
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy(net(xs)[hidden], ys[hidden])
        loss.backward()
        optimizer.step()
    return net


class Encoder(nn.Module):
    """An image with its gaps filled in to a Normal's ``(loc, scale)`` over ``z``."""

    def __init__(self, z_dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(X_DIM, hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, z_dim)
        self.scale = nn.Linear(hidden, z_dim)

    def forward(self, xs: torch.Tensor, guess: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(_fill_in(xs, guess))
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-4


class CVAE(nn.Module):
    """The tutorial's CVAE: prior, generation and recognition networks around the
    pretrained baseline, all registered with one ``pyro.module`` call in the model."""

    def __init__(self, baseline: BaselineNet, z_dim: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.baseline_net = baseline
        self.prior_net = Encoder(z_dim, hidden)
        self.generation_net = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, X_DIM), nn.Sigmoid()
        )
        self.recognition_net = Encoder(z_dim, hidden)

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        pyro.module("generation_net", self)
        with pyro.plate("data"):
            prior_loc, prior_scale = self.prior_net(xs, self.baseline_net(xs))
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            probs = self.generation_net(zs)
            if ys is not None:
                # Only the hidden pixels are data; the shown ones (-1 in ys) are masked out.
                hidden = xs == -1
                pyro.sample(
                    "y",
                    dist.Bernoulli(probs).mask(hidden).to_event(1),
                    obs=ys.clamp(min=0.0),
                )
            else:
                pyro.deterministic("y", probs.detach())
            return probs

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        with pyro.plate("data"):
            if ys is None:  # predicting: the prior network is the proposal
                loc, scale = self.prior_net(xs, self.baseline_net(xs))
            else:
                loc, scale = self.recognition_net(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class FlowGuide(nn.Module):
    """The recognition network's Normal pushed through flow layers."""

    def __init__(self, z_dim: int, iafs: list[nn.Module]) -> None:
        super().__init__()
        self.recognition_net = Encoder(z_dim)
        self.iafs = nn.ModuleList(iafs)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        pyro.module("cvae_flow_guide", self)
        with pyro.plate("data"):
            loc, scale = self.recognition_net(xs, ys)
            base = dist.Normal(loc, scale).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, list(self.iafs)))
