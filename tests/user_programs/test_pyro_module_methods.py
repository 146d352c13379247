"""A VAE written as one ``pyro.nn.PyroModule`` with ``model`` and ``guide`` methods, as Pyro
users write them: its ``PyroParam`` (an observation noise) is registered with the param
store only while the module's context is active, i.e. inside ``forward`` or a method
decorated with ``@pyro.nn.pyro_method``. Read in an undecorated ``model``, Pyro's SVI never
steps it; ``fit`` warns and must say what to do for a PyroModule (it already is one)."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.nn import PyroModule, PyroParam, pyro_method
from torch.distributions import constraints

from pyro_gen.infer import fit
from pyro_gen.infer.unregistered_params import UnregisteredParameterWarning

X = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
BATCHES = [X[:8], X[8:]]


class NoisyVAE(PyroModule):
    """``z ~ N(0, I)``, ``x | z ~ N(W z + b, diag(noise^2))``, amortized Normal guide."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = PyroModule[torch.nn.Linear](2, 4)
        self.encoder = PyroModule[torch.nn.Linear](4, 4)
        self.noise = PyroParam(torch.ones(4), constraint=constraints.positive)

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), self.noise).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            pyro.sample("z", dist.Normal(h[:, :2], h[:, 2:].exp()).to_event(1))


class DecoratedNoisyVAE(NoisyVAE):
    """The same module with Pyro's remedy: the methods run in the module's context."""

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        super().model(x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        super().guide(x)


def test_a_pyro_param_read_outside_the_modules_context_is_named_with_pyros_remedy():
    """Pyro's SVI leaves ``noise`` at its initial value here without a word; ``fit`` names
    the PyroParam and its module and points to ``pyro_method``, not to ``pyro.module``."""
    pyro.clear_param_store()
    vae = NoisyVAE()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    svi.step(X)
    assert "noise" not in pyro.get_param_store()  # Pyro's own loop never trains it
    pyro.clear_param_store()
    with pytest.warns(UnregisteredParameterWarning) as caught:
        fit(vae, BATCHES, epochs=1, progress=False)
    message = str(caught[0].message)
    assert "PyroParam 'noise' of a NoisyVAE" in message, message
    assert "@pyro.nn.pyro_method" in message, message


@pytest.mark.parametrize("compile", [False, None])
def test_decorated_methods_train_the_pyro_param_as_pyros_svi(compile):
    """With ``@pyro_method`` nothing is said and ``fit`` takes Pyro's SVI steps on every
    parameter, the PyroParam included."""
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    vae = DecoratedNoisyVAE()
    start = {k: v.clone() for k, v in vae.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnregisteredParameterWarning)
        fit(
            vae,
            BATCHES,
            epochs=2,
            optim=pyro.optim.Adam({"lr": 0.05}),
            compile=compile,
            progress=False,
        )
    ours = {k: v.detach().clone() for k, v in vae.named_parameters()}

    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    reference = DecoratedNoisyVAE()
    reference.load_state_dict(start)
    svi = SVI(reference.model, reference.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(2):
        for batch in BATCHES:
            svi.step(batch)
    assert not torch.equal(ours["noise_unconstrained"], start["noise_unconstrained"])
    for name, value in reference.named_parameters():
        assert torch.allclose(ours[name], value.detach(), atol=1e-6), name
