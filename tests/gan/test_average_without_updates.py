"""A ``Generator(net, average=...)`` trained in the user's own Pyro program: ``pyro.infer.SVI``
without ``update_average`` (``fit``'s step callback calls it), or restored through
``pyro.get_param_store().save/load``, which holds no buffers. The average's copy starts as
the initial weights, and ``sample()`` and the eval-mode model generated from it: the
untrained network, silently. An average of no updates now leaves the generator its own
weights (as the diffusion EMA does); after an update the average is used as before."""

from __future__ import annotations

import pyro
import torch
from pyro.infer import SVI

from pyro_gen.gan import Generator, NonSaturatingGAN
from pyro_gen.nn import MLPDiscriminator, MLPGenerator


def _train_in_svi(gen: Generator, steps: int) -> None:
    loss = NonSaturatingGAN(MLPDiscriminator((2,), (16,)))
    svi = SVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 1e-2}), loss)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        svi.step(3.0 + torch.randn(64, 2, generator=g))


def test_a_generator_trained_in_the_users_svi_loop_generates_with_its_trained_network():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    gen = Generator(MLPGenerator(2, (2,), (16,)), average=0.999)
    _train_in_svi(gen, 20)
    assert int(gen.average.num_updates) == 0
    gen.eval()
    pyro.set_rng_seed(1)
    samples = gen.sample(8)
    pyro.set_rng_seed(1)
    z = torch.randn(8, 2)  # the standard normal prior's draws, as sample() makes them
    with torch.no_grad():
        trained, initial = gen.net(z), gen.average.module[0](z)
    assert not torch.allclose(trained, initial, atol=1e-3)  # training moved the network
    torch.testing.assert_close(samples, trained)
    tr = pyro.poutine.trace(gen.model).get_trace(num_samples=8)  # the eval-mode model
    with torch.no_grad():
        torch.testing.assert_close(tr.nodes["x"]["value"], gen.net(tr.nodes["z"]["value"]))


def test_a_generator_restored_from_the_param_store_samples_with_the_restored_weights(tmp_path):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    trained = Generator(MLPGenerator(2, (2,), (16,)), average=0.999)
    _train_in_svi(trained, 5)
    pyro.get_param_store().save(tmp_path / "params.pt")
    z = torch.randn(6, 2)
    with torch.no_grad():
        expected = trained.net(z)
    pyro.clear_param_store()
    restored = Generator(MLPGenerator(2, (2,), (16,)), average=0.999)  # another initialization
    pyro.get_param_store().load(tmp_path / "params.pt")
    pyro.module("generator", restored.net, update_module_params=True)  # its registered name
    torch.testing.assert_close(restored.generate(z, averaged=True), expected)
    pyro.set_rng_seed(2)
    samples = restored.sample(6)
    pyro.set_rng_seed(2)
    torch.testing.assert_close(samples, restored.net(torch.randn(6, 2)).detach())


def test_after_an_update_the_average_is_used_and_an_eval_recording_follows_it():
    # the model in eval mode reads whether the average has had an update; the read stays
    # True as updates go on, so a recording of the eval-mode run stays valid
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    gen = Generator(MLPGenerator(2, (2,), (8,)), average=0.9)
    disc = MLPDiscriminator((2,), (8,))
    recorded, plain = NonSaturatingGAN(disc), NonSaturatingGAN(disc, record=False)
    svi = SVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 1e-2}), recorded)
    x = 3.0 + torch.randn(16, 2)
    svi.step(x)
    gen.update_average()
    for _ in range(3):
        gen.eval()
        for seed in range(4):  # a sighting, a recording, checks and a replay
            pyro.set_rng_seed(seed)
            value = recorded.loss(gen.model, gen.guide, x)
            pyro.set_rng_seed(seed)
            assert value == plain.loss(gen.model, gen.guide, x)
        gen.train()
        for _ in range(3):
            svi.step(x)
            gen.update_average()
    assert recorded.runs.recorded, recorded.runs.fallback_reason
    z = torch.randn(5, 2)
    with torch.no_grad():
        assert not torch.allclose(gen.generate(z, averaged=True), gen.net(z))
        torch.testing.assert_close(gen.generate(z, averaged=True), gen.average.module[0](z))
