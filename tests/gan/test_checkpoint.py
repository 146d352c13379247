"""A GAN's checkpoint holds the discriminator and both optimizers, and fit resumes exactly."""

from __future__ import annotations

import io

import pyro
import pytest
import torch

from pyro_gen.gan import Generator, NonSaturatingGAN, WassersteinGAN, WassersteinGP
from pyro_gen.infer import fit
from pyro_gen.nn import MLPDiscriminator, MLPGenerator


def build(cls: type, seed: int = 0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    gen = Generator(MLPGenerator(2, (2,), (16,)))
    kwargs = {"n_critic": 2} if cls is not NonSaturatingGAN else {}
    return gen, cls(MLPDiscriminator((2,), (16,)), **kwargs)


def state(gen: Generator, loss: torch.nn.Module) -> dict[str, torch.Tensor]:
    optimizer = loss.optimizer.state_dict()["state"]
    out = {f"gen.{k}": v for k, v in gen.state_dict().items()}
    out.update({f"loss.{k}": v for k, v in loss.state_dict().items() if torch.is_tensor(v)})
    out.update({f"dopt.{i}.{k}": v for i, s in optimizer.items() for k, v in s.items()})
    return {k: v.detach().clone() for k, v in out.items()}


def test_state_dict_round_trip_through_a_weights_only_file():
    gen, loss = build(WassersteinGP)
    for _ in range(3):
        loss.loss_and_grads(gen.model, gen.guide, torch.randn(16, 2))
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    _, fresh = build(WassersteinGP, seed=1)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    a, b = state(gen, loss), state(gen, fresh)
    assert a.keys() == b.keys() and any(k.startswith("dopt.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert (
        fresh.optimizer.state_dict()["param_groups"] == loss.optimizer.state_dict()["param_groups"]
    )


@pytest.mark.parametrize("cls", [NonSaturatingGAN, WassersteinGAN, WassersteinGP])
def test_fit_resumes_a_gan_exactly(cls, tmp_path):
    data = torch.randn(64, 2) + 3.0

    def train(steps: int, directory=None) -> dict[str, torch.Tensor]:
        optim = pyro.optim.Adam({"lr": 1e-2, "betas": (0.5, 0.999)})
        fit(gen, data, steps=steps, batch_size=16, loss=loss, optim=optim, progress=False,
            checkpoint_dir=directory)  # fmt: skip
        return state(gen, loss)

    gen, loss = build(cls)
    straight = train(10)
    gen, loss = build(cls)
    train(6, tmp_path)  # stops inside the second epoch
    gen, loss = build(cls, seed=1)  # fresh objects, other initial weights: all from the file
    resumed = train(10, tmp_path)
    assert straight.keys() == resumed.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=0, msg=k)
    d_steps = 10 * (1 if cls is NonSaturatingGAN else 2)
    assert int(resumed["dopt.0.step"]) == d_steps  # both optimizers came back
