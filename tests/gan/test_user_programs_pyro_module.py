"""A user's generator (or CycleGAN translator) made a :class:`~pyro.nn.PyroModule`.

``Generator.model`` and ``CycleGAN.model`` sent their networks through ``pyro.module``, which
stored every weight a PyroModule had already registered under its own name a second time
(``"generator$$$net.net.0.weight"`` beside ``"net.net.0.weight"``). Checked: each tensor is
stored once and the store holds the generator's weights alone (the discriminator is trained
by the loss's own torch optimizer); the PyroModule version trains to the plain version's
losses and weights under Pyro's SVI and pyro_gen's fit; a resumed ``fit`` equals one run.
"""

from __future__ import annotations

import pyro
import torch
from pyro.nn.module import to_pyro_module_
from torch import nn

from pyro_gen.gan import CycleGAN, CycleGANLoss, Generator, NonSaturatingGAN
from pyro_gen.nn import MLPDiscriminator, MLPGenerator
from tests.nn.pyro_module_checks import (
    assert_each_tensor_once,
    assert_same_weights,
    fit_losses,
    resumed_state,
    svi_losses,
)
from tests.reliability.identical_state import assert_identical

X = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)) + 1.0


def generator(pyro_module: bool) -> Generator:
    torch.manual_seed(0)
    gen = Generator(MLPGenerator(2, (2,), (5,)))
    if pyro_module:
        to_pyro_module_(gen.net)
    return gen


def adversarial_loss() -> NonSaturatingGAN:
    torch.manual_seed(1)
    return NonSaturatingGAN(
        MLPDiscriminator((2,), (5,)), optim=lambda p: torch.optim.Adam(p, lr=0.01)
    )


def _assert_the_store_holds_the_generators_weights(gen: Generator) -> None:
    assert_each_tensor_once()
    store = pyro.get_param_store()
    stored = {id(store._params[name]) for name in store}
    assert stored == {id(p) for p in gen.net.parameters()}, sorted(store.keys())


def test_a_pyro_module_generator_trains_as_the_nn_module_under_svi_stored_once():
    plain, converted = generator(False), generator(True)
    losses = svi_losses(plain, X, loss=adversarial_loss())
    p_losses = svi_losses(converted, X, loss=adversarial_loss())
    _assert_the_store_holds_the_generators_weights(converted)
    assert p_losses == losses
    assert_same_weights(plain, converted)


def test_fit_trains_a_pyro_module_generator_as_the_nn_module_stored_once():
    plain, converted = generator(False), generator(True)
    losses = fit_losses(plain, X, loss=adversarial_loss())
    assert fit_losses(converted, X, loss=adversarial_loss()) == losses
    _assert_the_store_holds_the_generators_weights(converted)
    assert_same_weights(plain, converted)


def test_a_resumed_fit_of_a_pyro_module_generator_equals_one_run(tmp_path):
    def make():
        return generator(True)

    straight = resumed_state(make, X, tmp_path / "a", [4], loss=adversarial_loss)
    resumed = resumed_state(make, X, tmp_path / "b", [2, 4], loss=adversarial_loss)
    assert_identical(straight, resumed)


def test_a_pyro_module_translator_of_a_cycle_gan_is_stored_once():
    def cycle(pyro_module: bool) -> CycleGAN:
        torch.manual_seed(0)
        cyc = CycleGAN(nn.Linear(2, 3), nn.Linear(3, 2), (2,), (3,))
        if pyro_module:
            to_pyro_module_(cyc.g)  # one translator a PyroModule, the other plain
        return cyc

    def loss() -> CycleGANLoss:
        torch.manual_seed(1)
        return CycleGANLoss(nn.Linear(2, 1), nn.Linear(3, 1))

    y = torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
    plain, converted = cycle(False), cycle(True)
    losses = svi_losses(plain, X, y, loss=loss())
    p_losses = svi_losses(converted, X, y, loss=loss())
    assert sorted(pyro.get_param_store().keys()) == ["bias", "f$$$bias", "f$$$weight", "weight"]
    assert_each_tensor_once()
    assert p_losses == losses
    assert_same_weights(plain, converted)
