"""The generator is an ordinary Pyro model: Predictive draws from it, a flow prior on z
trains with it, an adversarial loss leaves gradients on the generator alone, and its prior
draws in its network's dtype."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive
from torch import nn

from pyro_gen.distributions import Flow
from pyro_gen.gan import Generator, NonSaturatingGAN, WassersteinGP
from pyro_gen.infer import fit
from pyro_gen.nn import MLPDiscriminator, MLPGenerator
from pyro_gen.transforms import affine_coupling


def test_predictive_draws_from_the_generator_model():
    gen = Generator(MLPGenerator(3, (2,), (8,)))
    draws = Predictive(gen.model, guide=gen.guide, num_samples=40)(num_samples=50)
    z, x = draws["z"], draws["x"]
    assert z.shape == (40, 50, 3) and x.shape == (40, 50, 2)
    torch.testing.assert_close(x, gen.generate(z).detach())  # x = G(z) exactly
    assert abs(z.mean().item()) < 0.1 and abs(z.std().item() - 1) < 0.1  # z from N(0, I)


class Identity(nn.Module):
    """G(z) = z: only the prior can move the samples."""

    latent_dim, event_shape = 2, (2,)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z


def test_a_flow_prior_on_z_trains_through_the_adversarial_loss():
    pyro.set_rng_seed(0)
    prior = Flow((2,), [affine_coupling(2, hidden_dims=[16]), affine_coupling(2, parity=1)])
    gen = Generator(Identity(), prior=prior)
    data = torch.randn(512, 2) * 0.5 + 2.0
    adam = {"lr": 1.5e-3, "betas": (0.5, 0.999)}
    loss = NonSaturatingGAN(
        MLPDiscriminator((2,), (32,)), optim=lambda p: torch.optim.Adam(p, **adam)
    )
    before = gen.sample(2000).median(0).values
    fit(gen, data, steps=120, batch_size=128, loss=loss, optim=pyro.optim.Adam(adam),
        progress=False)  # fmt: skip
    assert any(name.startswith("prior$$$") for name in pyro.get_param_store())
    after = gen.sample(2000).median(0).values
    assert before.abs().max() < 0.2
    assert (after > 1.0).all(), after  # the flow moved the samples toward the data at (2, 2)


def test_the_loss_leaves_gradients_on_the_generator_only():
    gen = Generator(MLPGenerator(2, (2,), (8,)))
    loss = WassersteinGP(MLPDiscriminator((2,), (8,)), n_critic=2)
    with pyro.poutine.trace(param_only=True) as tr:
        loss.loss_and_grads(gen.model, gen.guide, torch.randn(16, 2))
    seen = {site["value"].unconstrained() for site in tr.trace.nodes.values()}
    assert seen == set(gen.net.parameters())  # what fit's step would update
    assert all(p.grad is not None for p in gen.net.parameters())
    assert all(p.grad is None for p in loss.discriminator.parameters())
    assert not any("discriminator" in name for name in pyro.get_param_store())
    assert int(loss.optimizer.state_dict()["state"][0]["step"]) == 2  # n_critic updates


def test_a_frozen_discriminator_is_not_stepped_and_the_generator_trains_against_it():
    # requires_grad_(False), torch's way to freeze, replaces loss.eval() for this, which a
    # training call now refuses (tests/infer/test_fit_loss_modes.py)
    gen = Generator(MLPGenerator(2, (2,), (8,)))
    loss = NonSaturatingGAN(MLPDiscriminator((2,), (8,)))
    loss.discriminator.requires_grad_(False)
    before = [p.detach().clone() for p in loss.discriminator.parameters()]
    value = loss.loss(gen.model, gen.guide, torch.randn(16, 2))
    loss.loss_and_grads(gen.model, gen.guide, torch.randn(16, 2))
    assert value > 0 and not loss.optimizer.state_dict()["state"]
    assert all(torch.equal(a, b) for a, b in zip(before, loss.discriminator.parameters()))
    assert all(p.grad is not None for p in gen.net.parameters())
    assert not any(p.requires_grad for p in loss.discriminator.parameters())


def test_conditional_gan_follows_the_label():
    # class k sits at 4k - 2 on the line: the generator must learn where each label goes
    pyro.set_rng_seed(0)
    y = torch.randint(2, (1024,))
    x = (4.0 * y - 2.0 + 0.2 * torch.randn(1024))[:, None]
    gen = Generator(MLPGenerator(2, (1,), (32,), context_dim=2), num_classes=2)
    loss = NonSaturatingGAN(
        MLPDiscriminator((1,), (32,), context_dim=2),
        optim=lambda p: torch.optim.Adam(p, lr=2e-3, betas=(0.5, 0.999)),
    )
    fit(gen, {"x": x, "y": y}, steps=300, batch_size=128, loss=loss, progress=False,
        optim=pyro.optim.Adam({"lr": 2e-3, "betas": (0.5, 0.999)}))  # fmt: skip
    for label, centre in ((0, -2.0), (1, 2.0)):
        samples = gen.sample(500, y=torch.full((500,), label))
        assert (samples - centre).abs().lt(1.0).float().mean() > 0.9, (label, samples.mean())


def test_bad_input_gets_one_clear_error():
    gen = Generator(MLPGenerator(2, (2,), (8,)))
    wide = NonSaturatingGAN(MLPDiscriminator((3,), (8,)))
    with pytest.raises(ValueError, match=r"takes examples of shape \(3,\) but the model's site"):
        wide.loss_and_grads(gen.model, gen.guide, torch.randn(4, 2))
    shapeless = NonSaturatingGAN(nn.Linear(3, 1))  # no event_shape attribute to check first
    with pytest.raises(ValueError, match="the discriminator failed on site 'x'"):
        shapeless.loss_and_grads(gen.model, gen.guide, torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"expected data of shape \(batch, 2\)"):
        gen.model(torch.randn(4, 3))

    cgen = Generator(MLPGenerator(2, (2,), (8,), context_dim=3), num_classes=3)
    closs = NonSaturatingGAN(MLPDiscriminator((2,), (8,), context_dim=3))
    with pytest.raises(ValueError, match="conditional generator needs labels: call the model"):
        closs.loss_and_grads(cgen.model, cgen.guide, torch.randn(4, 2))
    with pytest.raises(ValueError, match="discriminator is conditional"):
        closs.loss_and_grads(gen.model, gen.guide, torch.randn(4, 2))
    with pytest.raises(ValueError, match="observes no site"):
        closs.loss_and_grads(cgen.model, cgen.guide, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="n_critic must be a positive whole number"):
        NonSaturatingGAN(MLPDiscriminator((2,), (8,)), n_critic=0)


def test_a_conditional_generator_samples_every_class_in_turn_without_labels():
    gen = Generator(MLPGenerator(2, (2,), (8,), context_dim=3), num_classes=3)
    torch.manual_seed(0)
    unlabelled = gen.sample(7)
    torch.manual_seed(0)
    labelled = gen.sample(7, y=torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    assert torch.equal(unlabelled, labelled)
    torch.manual_seed(0)
    assert not torch.equal(gen.sample(7, y=torch.zeros(7, dtype=torch.long)), labelled)


@pytest.mark.parametrize("loss_type", [NonSaturatingGAN, WassersteinGP])
def test_examples_the_model_masks_out_count_for_nothing(loss_type):
    # a user's generator whose last examples are padding, masked out as in any Pyro model:
    # neither the discriminator nor the generator may learn from what the padding holds
    def run(padding: float, keeps: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        pyro.clear_param_store()
        torch.manual_seed(0)
        net, disc = nn.Linear(3, 2), nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))

        def model(x, keep):
            pyro.module("g", net)
            with pyro.plate("N", x.shape[0]), pyro.poutine.mask(mask=keep):
                z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0).expand([3]).to_event(1))
                pyro.sample("obs", pyro.distributions.Delta(net(z), event_dim=1), obs=x)

        loss = loss_type(disc, n_critic=2)
        svi = pyro.infer.SVI(model, lambda x, keep: None, pyro.optim.Adam({"lr": 0.01}), loss)
        pyro.set_rng_seed(1)
        states = []
        for keep in keeps:
            x = torch.randn(8, 2)
            x[~keep] = padding
            svi.step(x, keep)
            states.append([p.detach().clone() for p in disc.parameters()])
        return states

    some, none = torch.arange(8) < 6, torch.zeros(8, dtype=torch.bool)
    zero, far = run(0.0, [some] * 3), run(1e3, [some] * 3)
    assert all(torch.equal(a, b) for a, b in zip(zero[-1], far[-1]))
    # a batch with every example masked out leaves the discriminator where it was (no
    # optimizer step: Adam's momentum alone would move it)
    before, after = run(0.0, [some, none])
    assert all(torch.equal(a, b) for a, b in zip(before, after))


# A Generator(net.double()) had a float32 default prior, and its first draw failed with torch's
# "mat1 and mat2 must have the same dtype".
def test_a_float64_network_gets_a_float64_prior():
    torch.manual_seed(0)
    gen = Generator(MLPGenerator(2, (2,), hidden_dims=(8,)).double())
    loss = NonSaturatingGAN(MLPDiscriminator((2,), hidden_dims=(8,)).double())
    x = torch.randn(16, 2, dtype=torch.float64)
    svi = SVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 1e-3}), loss)
    assert torch.isfinite(torch.tensor(svi.step(x)))
    trace = poutine.trace(gen.model).get_trace(None, num_samples=5)
    z, out = trace.nodes["z"]["value"], trace.nodes["x"]["value"]
    assert z.dtype == out.dtype == torch.float64
    assert torch.equal(out, gen.net(z))
    assert gen.sample(3).dtype == torch.float64


def test_a_network_converted_after_the_generator_was_built_is_one_error():
    gen = Generator(MLPGenerator(2, (2,), hidden_dims=(8,)))
    gen.net.double()
    with pytest.raises(TypeError, match=r"float64 parameters but its prior draws float32") as e:
        gen.sample(2)
    assert "gen.to(torch.float64)" in str(e.value)
    gen.to(torch.float64)  # the fix it names
    assert gen.sample(2).dtype == torch.float64
