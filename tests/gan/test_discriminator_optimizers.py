"""The discriminator's optimizer as a Pyro user writes one: ``optim=`` takes a factory of
torch optimizers or the Pyro optimizer one hands ``SVI`` (``pyro.optim.Adam({...})``), which
trains the discriminator as the torch optimizer with its arguments does, bit for bit; what
cannot build one is refused with one error."""

from __future__ import annotations

import functools

import pyro
import pytest
import torch
from pyro.infer import SVI
from torch import nn

from pyro_gen.gan import CycleGAN, CycleGANLoss, Generator, NonSaturatingGAN, WassersteinGP
from pyro_gen.nn import MLPDiscriminator, MLPGenerator


def _train(loss_type: type, optim) -> list[torch.Tensor]:  # noqa: ANN001
    pyro.clear_param_store()
    torch.manual_seed(0)
    gen = Generator(MLPGenerator(2, (2,), (8,)))
    loss = loss_type(MLPDiscriminator((2,), (8,)), optim=optim, n_critic=2)
    svi = SVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 1e-2}), loss)
    pyro.set_rng_seed(1)
    for _ in range(3):
        svi.step(torch.randn(16, 2) + 1.0)
    return [p.detach().clone() for m in (gen, loss) for p in m.parameters()]


@pytest.mark.parametrize("loss_type", [NonSaturatingGAN, WassersteinGP])
def test_a_pyro_optimizer_trains_the_discriminator_as_its_torch_optimizer(loss_type):
    # pyro.optim.Adam was called as a factory, gave None, and the first step failed with
    # "'NoneType' object has no attribute 'zero_grad'"
    expected = _train(loss_type, functools.partial(torch.optim.Adam, lr=0.01, betas=(0.5, 0.9)))
    got = _train(loss_type, pyro.optim.Adam({"lr": 0.01, "betas": (0.5, 0.9)}))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    rms = _train(loss_type, pyro.optim.RMSprop({"lr": 0.01}))
    assert not all(torch.equal(a, b) for a, b in zip(rms, expected))


def test_a_cyclegan_takes_a_pyro_optimizer_for_both_discriminators():
    loss = CycleGANLoss(nn.Linear(2, 1), nn.Linear(2, 1), optim=pyro.optim.SGD({"lr": 0.5}))
    for term in (loss.x, loss.y):
        assert type(term.optimizer) is torch.optim.SGD and term.optimizer.defaults["lr"] == 0.5
    cyc = CycleGAN(nn.Linear(2, 2), nn.Linear(2, 2), (2,), (2,))
    before = [p.detach().clone() for p in loss.parameters()]
    loss.loss_and_grads(cyc.model, cyc.guide, torch.randn(8, 2), torch.randn(8, 2))
    assert all(not torch.equal(a, p) for a, p in zip(before, loss.parameters()))


def test_what_cannot_build_the_discriminators_optimizer_is_one_clear_error():
    d = MLPDiscriminator((2,), (8,))
    built = torch.optim.Adam(d.parameters())
    cases = {
        r"already built on parameters \(Adam\)": built,
        "got 'adam'": "adam",
        "which returned NoneType": lambda params: None,
    }
    for message, optim in cases.items():
        with pytest.raises(TypeError, match=message):
            NonSaturatingGAN(d, optim=optim)
    with pytest.raises(ValueError, match="clip_args .* would not be applied"):
        NonSaturatingGAN(d, optim=pyro.optim.Adam({"lr": 0.01}, {"clip_norm": 1.0}))
    with pytest.raises(ValueError, match="per-parameter arguments"):
        NonSaturatingGAN(d, optim=pyro.optim.Adam(lambda name, param: {"lr": 0.01}))
    scheduler = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}, "gamma": 0.9}
    )
    with pytest.raises(ValueError, match="Pyro scheduler"):
        NonSaturatingGAN(d, optim=scheduler)
