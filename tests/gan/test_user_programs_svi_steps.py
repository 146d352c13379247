"""A user's GAN as a plain Pyro program: a generator function registering its network with
``pyro.module``, an adversarial loss object stepped by ``pyro.infer.SVI``.

Checked against hand-written PyTorch: ``n_critic`` discriminator steps per generator step are
exactly that many Adam steps on fresh generated batches, followed by the generator's step on
the last batch; a run resumed from Pyro's own state (param store, the Pyro optimizer's state,
the loss's ``state_dict``, the random state) continues bit for bit.
"""

from __future__ import annotations

import copy
import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from torch import nn
from torch.nn import functional as F

from pyro_gen.gan import NonSaturatingGAN, WassersteinGP


def _nets():
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    D = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    return G, D


def _program(G: nn.Module):
    def model(x):
        # update_module_params: a restored param store reaches the network (Pyro's idiom)
        pyro.module("G", G, update_module_params=True)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            return pyro.sample("x", dist.Delta(G(z), event_dim=1), obs=x)

    def guide(x):
        pass

    return model, guide


DATA = torch.randn(32, 2, generator=torch.Generator().manual_seed(1)) * 0.5 + 2


@pytest.mark.parametrize("record", [False, True])
def test_n_critic_steps_are_the_hand_written_discriminator_and_generator_steps(record):
    pyro.clear_param_store()
    G, D = _nets()
    start_G, start_D = copy.deepcopy(G.state_dict()), copy.deepcopy(D.state_dict())
    model, guide = _program(G)
    loss = NonSaturatingGAN(D, n_critic=3, record=record)
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 0.1}), loss)
    pyro.set_rng_seed(1)
    value = svi.step(DATA)

    G.load_state_dict(start_G)
    D.load_state_dict(start_D)
    adam = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))  # the DCGAN default
    pyro.set_rng_seed(1)
    for _ in range(3):
        z = torch.randn(32, 2)
        fake = G(z).detach()
        d_loss = F.softplus(-D(DATA)).mean() + F.softplus(D(fake)).mean()
        adam.zero_grad()
        d_loss.backward()
        adam.step()
    g_loss = F.softplus(-D(G(z))).sum()  # the last batch, scored by the updated D
    G.zero_grad()
    g_loss.backward()
    with torch.no_grad():
        for p in G.parameters():
            p -= 0.1 * p.grad
    assert value == pytest.approx(float(g_loss.detach()), rel=1e-6)
    for name, value in pyro.get_param_store().named_parameters():
        assert torch.allclose(value, G.state_dict()[name.split("$$$")[1]]), name
    assert all(torch.allclose(a, b) for a, b in zip(loss.discriminator.parameters(),
                                                    D.parameters()))  # fmt: skip


def _run(loss_type, steps: int, state: bytes | None = None):
    pyro.clear_param_store()
    G, D = _nets()
    model, guide = _program(G)
    loss = loss_type(D, n_critic=2)
    optim = pyro.optim.Adam({"lr": 0.01})
    svi = SVI(model, guide, optim, loss)
    if state is None:
        pyro.set_rng_seed(3)
    else:
        saved = torch.load(io.BytesIO(state), weights_only=False)
        pyro.get_param_store().set_state(saved["params"])
        loss.load_state_dict(saved["loss"])
        optim.set_state(saved["optim"])
        torch.set_rng_state(saved["rng"])
    values = [svi.step(DATA) for _ in range(steps)]
    buffer = io.BytesIO()
    torch.save(
        {
            "params": pyro.get_param_store().get_state(),
            "loss": loss.state_dict(),
            "optim": optim.get_state(),
            "rng": torch.get_rng_state(),
        },
        buffer,
    )
    weights = [p.detach().clone() for p in [*G.parameters(), *D.parameters()]]
    return values, weights, buffer.getvalue()


@pytest.mark.parametrize("loss_type", [NonSaturatingGAN, WassersteinGP])
def test_svi_resumed_from_pyros_own_state_is_the_straight_run(loss_type):
    straight, weights, _ = _run(loss_type, 6)
    first, _, state = _run(loss_type, 3)
    second, resumed, _ = _run(loss_type, 3, state)
    assert first + second == straight
    assert all(torch.equal(a, b) for a, b in zip(resumed, weights))
