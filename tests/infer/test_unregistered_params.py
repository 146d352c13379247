"""A network used in a model or guide without ``pyro.module`` is never trained; fit says so.

Forgetting ``pyro.module("decoder", decoder)`` is a common Pyro mistake: the ELBO falls
through the guide's parameters while the decoder keeps its random weights, and Pyro says
nothing. The ways of registering (``pyro.module``, ``PyroModule``, ``module_local_params``)
and of keeping a network fixed (``requires_grad_(False)``) are not warned about.
"""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroParam
from torch import nn

from pyro_gen.infer import fit
from pyro_gen.infer.unregistered_params import UnregisteredParameterWarning
from pyro_gen.vae import AutoAmortizedNormal

X = (torch.rand(64, 6, generator=torch.Generator().manual_seed(0)) < 0.3).float()


def _vae(register: bool, decoder: nn.Module):
    def model(x):
        if register:
            pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    return model


def _decoder() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 6))


@pytest.mark.parametrize("compile", [False, True])
def test_a_network_the_model_does_not_register_is_named_and_stays_untrained(compile):
    pyro.clear_param_store()
    decoder = _decoder()
    model = _vae(False, decoder)
    before = [p.detach().clone() for p in decoder.parameters()]
    message = (
        r"computes with a Sequential \(parameters of shapes \(8, 2\), \(8,\), \(6, 8\), "
        r"\(6,\)\).*not registered with Pyro.*pyro.module\(\"name\", module\)"
    )
    with pytest.warns(UnregisteredParameterWarning, match=message):
        fit(model, X, guide=AutoAmortizedNormal(model), steps=3, batch_size=32, progress=False,
            compile=compile)  # fmt: skip
    # what the warning is about: SVI stepped the guide, never the decoder
    assert all(torch.equal(a, b) for a, b in zip(before, decoder.parameters()))


class _PyroDecoder(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = PyroModule[nn.Sequential](
            PyroModule[nn.Linear](2, 8), nn.Tanh(), PyroModule[nn.Linear](8, 6)
        )

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.net(z)).to_event(1), obs=x)


class _PyroParamDecoder(PyroModule):
    """Weights as PyroParams: what Pyro steps under ``module_local_params``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = PyroParam(0.1 * torch.randn(6, 2))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z @ self.weight.T).to_event(1), obs=x)


def _frozen_decoder_model():
    return _vae(False, _decoder().requires_grad_(False))


@pytest.mark.parametrize(
    "make, local",
    [
        (lambda: _vae(True, _decoder()), False),
        (_PyroDecoder, False),
        (_PyroParamDecoder, True),
        (_frozen_decoder_model, False),
    ],
    ids=["pyro.module", "PyroModule", "PyroModule-local-params", "frozen"],
)
def test_registered_or_frozen_networks_are_not_warned_about(make, local):
    pyro.clear_param_store()
    with pyro.settings.context(module_local_params=local):
        model = make()
        # under module_local_params Pyro steps PyroParams only: Pyro's AutoNormal, one batch
        guide = AutoNormal(model) if local else AutoAmortizedNormal(model)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnregisteredParameterWarning)
            fit(model, X, guide=guide, steps=2, batch_size=64 if local else 32, progress=False)


def test_data_that_requires_a_gradient_is_not_a_parameter():
    pyro.clear_param_store()
    model = _vae(True, _decoder())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnregisteredParameterWarning)
        fit(model, X.clone().requires_grad_(), guide=AutoAmortizedNormal(model), steps=1,
            batch_size=64, progress=False)  # fmt: skip
