"""A loss object's mode under fit and Pyro's SVI: fit keeps the modes the user set, so an
adversarial loss left in eval mode (after an evaluation) trained no discriminator, and a
Generator with an average left in eval mode trained no generator, both silently. Each is now
one clear error, the same from fit, SVI.step and a direct call (Lightning's step); a frozen
discriminator is frozen with requires_grad_(False), and deliberately mixed modes stay."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI
from torch import nn

from pyro_gen.gan import CycleGAN, CycleGANLoss, Generator, NonSaturatingGAN, WassersteinGP
from pyro_gen.infer import fit
from pyro_gen.nn import MLPDiscriminator, MLPGenerator

X = torch.randn(64, 2)


def snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in module.state_dict().values()]


def unchanged(before: list[torch.Tensor], module: nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, module.state_dict().values()))


def train(gen: Generator, loss: nn.Module) -> None:
    fit(gen, X, loss=loss, steps=3, batch_size=32, progress=False, clear_params=True)


LOSSES = {
    "NonSaturatingGAN": lambda: NonSaturatingGAN(MLPDiscriminator((2,), (8,))),
    "WassersteinGP": lambda: WassersteinGP(MLPDiscriminator((2,), (8,)), n_critic=2),
}


@pytest.mark.parametrize("name", LOSSES)
def test_fit_and_svi_refuse_a_loss_left_in_eval_mode_and_train_nothing(name):
    gen = Generator(MLPGenerator(2, (2,), (8,)))
    loss = LOSSES[name]()
    # an evaluation in eval mode, as a user does; its value is still given
    assert loss.eval().loss(gen.model, gen.guide, X) != 0
    d, g = snapshot(loss.discriminator), snapshot(gen)
    message = rf"{name} is in eval mode .* call loss\.train\(\) before training"
    with pytest.raises(RuntimeError, match=message):
        train(gen, loss)
    svi = SVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 0.1}), loss=loss)
    with pytest.raises(RuntimeError, match=message):
        svi.step(X)
    with pytest.raises(RuntimeError, match=message):  # Lightning's step calls the loss
        loss(gen.model, gen.guide, X)
    assert unchanged(d, loss.discriminator) and unchanged(g, gen)
    assert not loss.training and not loss.optimizer.state_dict()["state"]  # left as it was
    assert svi.evaluate_loss(X) != 0  # evaluating in eval mode stays allowed
    loss.train()
    train(gen, loss)
    assert not unchanged(d, loss.discriminator) and not unchanged(g, gen)


def test_a_cyclegan_loss_left_in_eval_mode_is_refused():
    cyc = CycleGAN(nn.Linear(1, 1), nn.Linear(1, 1), (1,), (1,))
    loss = CycleGANLoss(nn.Linear(1, 1), nn.Linear(1, 1)).eval()
    data = {"x": torch.randn(16, 1), "y": torch.randn(16, 1)}
    with pytest.raises(RuntimeError, match=r"CycleGANLoss is in eval mode .*loss\.x\."):
        fit(cyc, data, loss=loss, steps=2, batch_size=8, progress=False, clear_params=True)
    assert not loss.x.optimizer.state_dict()["state"]
    loss.x.discriminator.requires_grad_(False)
    loss.train()
    fit(cyc, data, loss=loss, steps=2, batch_size=8, progress=False, clear_params=True)
    assert not loss.x.optimizer.state_dict()["state"]  # frozen: never stepped
    assert int(loss.y.optimizer.state_dict()["state"][0]["step"]) == 2


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_discriminator_frozen_with_requires_grad_is_not_stepped_in_either_mode(mode):
    gen = Generator(MLPGenerator(2, (2,), (8,)))
    loss = NonSaturatingGAN(MLPDiscriminator((2,), (8,)))
    loss.discriminator.requires_grad_(False)
    loss.train(mode == "train")
    d, g = snapshot(loss.discriminator), snapshot(gen)
    train(gen, loss)
    assert unchanged(d, loss.discriminator) and not unchanged(g, gen)
    assert loss.training is (mode == "train") and not loss.optimizer.state_dict()["state"]


def test_a_deliberately_mixed_loss_trains_and_keeps_its_frozen_batch_norm():
    gen = Generator(MLPGenerator(2, (2,), (8,)))
    disc = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    loss = NonSaturatingGAN(disc).eval()
    with pytest.raises(RuntimeError, match="loss.train()"):
        train(gen, loss)
    loss.train()
    disc[1].eval()  # its running statistics frozen on purpose
    stats = snapshot(disc[1])[2:]
    weights = [p.detach().clone() for p in disc.parameters()]
    train(gen, loss)
    assert loss.training and disc.training and not disc[1].training
    assert all(torch.equal(a, b) for a, b in zip(stats, snapshot(disc[1])[2:]))
    assert not any(torch.equal(a, b) for a, b in zip(weights, disc.parameters()))


@pytest.mark.parametrize("average", [None, 0.99])
def test_a_whole_generator_in_eval_mode_trains_unless_its_average_takes_the_gradient(average):
    gen = Generator(MLPGenerator(2, (2,), (8,)), average=average).eval()
    loss = NonSaturatingGAN(MLPDiscriminator((2,), (8,)))
    g = [p.detach().clone() for p in gen.net.parameters()]
    if average is None:  # Pyro's way: the model trains in the mode the user gave it
        train(gen, loss)
        assert not gen.training and not unchanged(g, gen.net)
        return
    # the averaged weights, which an eval-mode model generates with, carry no gradient
    message = r"Generator is in eval mode.*gen\.train\(\)"
    with pytest.raises(RuntimeError, match=message):
        train(gen, loss)
    svi = SVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 0.1}), loss=loss)
    with pytest.raises(RuntimeError, match=message):
        svi.step(X)
    assert all(torch.equal(a, b) for a, b in zip(g, gen.net.parameters()))
    assert svi.evaluate_loss(X) != 0  # scoring the averaged generator stays allowed
    gen.train()
    train(gen, loss)
    assert not any(torch.equal(a, b) for a, b in zip(g, gen.net.parameters()))
