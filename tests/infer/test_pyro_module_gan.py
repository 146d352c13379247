"""A generator network a Pyro user wrote as a ``PyroModule``, in pyro_gen's ``Generator`` and
trained adversarially by ``fit``: the trained generator and loss save whole."""

from __future__ import annotations

import inspect

import pyro
import pytest
import torch
from torch import nn

import pyro_gen.gan as G
from pyro_gen.infer import fit
from pyro_gen.nn import MLPDiscriminator, MLPGenerator
from pyro_gen.transforms._base import PicklableModule
from tests.infer.pickle_roundtrip import assert_survives_pickling


class Net(pyro.nn.PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.latent_dim, self.event_shape = 2, (2,)
        self.layers = pyro.nn.PyroModule[nn.Sequential](nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


@pytest.mark.parametrize("net", ["pyro_module", "mlp_generator"])
def test_a_trained_generator_and_its_loss_save_whole(net: str):
    """With pyro_gen's own network ``torch.save`` failed ('cannot pickle
    weakref.ReferenceType'): the param store leaves a weakref on every parameter that
    ``pyro.module`` registered, which only a PyroModule's own pickling removed."""
    pyro.clear_param_store()
    gen = G.Generator(Net() if net == "pyro_module" else MLPGenerator(2, (2,), (8,)), average=0.9)
    loss = G.NonSaturatingGAN(MLPDiscriminator((2,), hidden_dims=(8,)))
    data = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    fit(gen, data, loss=loss, steps=2, batch_size=16, progress=False,
        step_callbacks=[gen.update_average])  # fmt: skip
    assert_survives_pickling(gen)
    assert_survives_pickling(loss)
    fit(gen, data, loss=loss, steps=1, batch_size=16, progress=False)  # still trains after


def test_every_public_gan_module_drops_the_param_store_weakrefs():
    for name in G.__all__:
        obj = getattr(G, name)
        if inspect.isclass(obj) and issubclass(obj, nn.Module):
            assert issubclass(obj, PicklableModule | pyro.nn.PyroModule), name
