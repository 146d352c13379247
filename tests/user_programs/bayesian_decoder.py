"""A VAE whose decoder weights have priors, written with Pyro's ``PyroModule`` and
``PyroSample`` as in Pyro's "Modules in Pyro" tutorial: the weights are global latents
sampled when the decoder runs, ``z`` is a local latent under the data plate, and the
decoder runs between two entries of that plate so that its weights stay outside it.
The guide a user builds is an ``AutoGuideList``: ``AutoNormal`` on the weights and a
hand-written amortized Normal on ``z`` (:class:`AmortizedZ`).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuideList, AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

from tests.user_programs.vae import X_DIM, Encoder

Z_DIM = 2
HIDDEN = 8


def _bayesian_linear(n_in: int, n_out: int) -> PyroModule:
    layer = PyroModule[nn.Linear](n_in, n_out)
    layer.weight = PyroSample(dist.Normal(0.0, 1.0).expand([n_out, n_in]).to_event(2))
    layer.bias = PyroSample(dist.Normal(0.0, 1.0).expand([n_out]).to_event(1))
    return layer


class BayesianDecoderVAE(PyroModule):
    """``W ~ N(0, I)``, ``z_i ~ N(0, I)``, ``x_i | z_i, W ~ Bernoulli(decoder_W(z_i))``."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = PyroModule[nn.Sequential](
            _bayesian_linear(Z_DIM, HIDDEN), nn.Softplus(), _bayesian_linear(HIDDEN, X_DIM)
        )

    def forward(self, x: torch.Tensor) -> None:
        data = pyro.plate("data", x.shape[0])
        with data:
            loc = x.new_zeros(x.shape[0], Z_DIM)
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
        logits = self.decoder(z)  # samples the weights once, outside the data plate
        with data:
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


class AmortizedZ(nn.Module):
    """``q(z_i | x_i)``: the encoder's Normal, under the data plate that the
    ``AutoGuideList`` it belongs to has entered (its parts share the list's plates)."""

    def __init__(self, guides: AutoGuideList) -> None:
        super().__init__()
        self.encoder = Encoder(Z_DIM, HIDDEN)
        self._plates = lambda: guides.plates  # a plain reference would make a module cycle

    def forward(self, x: torch.Tensor) -> None:
        # no pyro.module: as a part of an AutoGuideList (a PyroModule) it is registered
        with self._plates()["data"]:
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def guide_for(vae: BayesianDecoderVAE) -> AutoGuideList:
    """``AutoNormal`` on the decoder's weights (``z`` hidden from it), then the amortized
    guide on ``z``."""
    # the plate takes each call's batch size (the prototype trace's would stay fixed)
    guide = AutoGuideList(vae, create_plates=lambda x: pyro.plate("data", x.shape[0]))
    guide.append(AutoNormal(poutine.block(vae, hide=["z"]), init_scale=0.05))
    guide.append(AmortizedZ(guide))
    return guide
