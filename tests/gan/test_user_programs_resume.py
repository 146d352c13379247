"""A user's own GAN module (``model``/``guide`` methods, a mask, ``poutine.scale``, a
reparameterized Normal observation, an :class:`ExponentialAverage` of the generator updated by
a step callback) trained by ``fit`` with every adversarial loss: a run stopped at a checkpoint
and resumed in fresh objects with other seeds is the uninterrupted run, bit for bit (the
generator, its average, the discriminator and the discriminator's optimizer state)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_gen.gan import (
    ExponentialAverage,
    HingeGAN,
    LeastSquaresGAN,
    MinimaxGAN,
    NonSaturatingGAN,
    WassersteinGAN,
    WassersteinGP,
)
from pyro_gen.infer import fit
from tests.gan.user_networks import Critic, mlp


class UserGAN(nn.Module):
    """A generator written as a Pyro model by hand, keeping its own weight average."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(2, 2)
        self.average = ExponentialAverage(self.net, decay=0.9)

    def model(self, x: torch.Tensor, keep: torch.Tensor) -> None:
        pyro.module("gen", self.net)
        with pyro.plate("data", x.shape[0]), poutine.mask(mask=keep), poutine.scale(scale=0.5):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.net(z), 0.05).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, keep: torch.Tensor) -> None:
        pass


def update_average(step: int, module: UserGAN) -> None:
    module.average.update(module.net)


DATA = {"x": torch.randn(48, 2) + 1.0, "keep": torch.arange(48) % 4 != 0}


@pytest.mark.parametrize(
    "cls",
    [MinimaxGAN, NonSaturatingGAN, LeastSquaresGAN, HingeGAN, WassersteinGAN, WassersteinGP],
    ids=lambda c: c.__name__,
)
def test_a_resumed_run_is_the_straight_run_bit_for_bit(cls, tmp_path):
    def train(steps: int, seed: int = 0, directory=None):  # noqa: ANN001, ANN202
        pyro.clear_param_store()
        torch.manual_seed(seed)
        gan, loss = UserGAN(), cls(Critic(), n_critic=2)
        pyro.set_rng_seed(seed)
        fit(gan, DATA, steps=steps, batch_size=16, loss=loss, progress=False,
            checkpoint_dir=directory, step_callbacks=[update_average])  # fmt: skip
        state = {f"gan.{k}": v for k, v in gan.state_dict().items()}
        state.update({f"loss.{k}": v for k, v in loss.state_dict().items() if torch.is_tensor(v)})
        return state, loss.optimizer.state_dict()["state"]

    straight, optimizer = train(7)
    train(4, directory=tmp_path)  # stops inside the second epoch
    resumed, optimizer_resumed = train(7, seed=5, directory=tmp_path)
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    assert int(resumed["gan.average.num_updates"]) == 7
    # the average moved off the network's first weights, and is not the network itself
    assert not torch.equal(resumed["gan.average.module.2.weight"], resumed["gan.net.2.weight"])
    assert optimizer.keys() == optimizer_resumed.keys() and optimizer
    for k, state in optimizer.items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(optimizer_resumed[k][name]), torch.as_tensor(value))
