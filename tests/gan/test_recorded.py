"""The adversarial losses' recorded generating run against the same run through Pyro: same
examples, losses, gradients and fit trajectories for the same seed, and a clean fallback
(one log line) for models a recording cannot stand for."""

from __future__ import annotations

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.distributions import Flow
from pyro_gen.gan import CycleGAN, CycleGANLoss, Generator, NonSaturatingGAN, WassersteinGP
from pyro_gen.gan.recorded import RecordedRuns
from pyro_gen.infer import fit
from pyro_gen.nn import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator
from pyro_gen.transforms import affine_coupling


def _state(*modules: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for m in modules for t in (*m.parameters(), *m.buffers())]


def _trajectory(record: bool, build, data, **kwargs):  # noqa: ANN001, ANN202
    """Trains a fresh GAN from seed 0 through fit; its final state and the loss object."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    gen, loss = build(record)
    pyro.set_rng_seed(1)
    fit(gen, data, epochs=kwargs.pop("epochs", 3), loss=loss, progress=False, **kwargs)
    return _state(gen, loss), loss


@pytest.mark.parametrize("kind", ["mlp", "conditional", "dcgan"])
def test_fit_with_the_recorded_run_follows_the_pyro_run_exactly(kind: str) -> None:
    n, batch = (64, 16) if kind != "dcgan" else (32, 8)
    if kind == "dcgan":  # convolutions and batch norm, whose running statistics must move
        data = torch.rand(n, 28, 28)

        def build(record: bool):  # noqa: ANN202
            return (
                Generator(DCGANGenerator(4, width=4)),
                NonSaturatingGAN(DCGANDiscriminator(width=4), record=record),
            )
    else:
        context = 3 if kind == "conditional" else 0
        data = torch.rand(n, 2)
        if context:  # batches whose smallest and largest labels differ
            labels = [torch.arange(16) % k + lo for k, lo in ((2, 0), (3, 0), (2, 1), (2, 0))]
            data = [{"x": x, "y": y} for x, y in zip(data.split(16), labels)]

        def build(record: bool):  # noqa: ANN202
            net = MLPGenerator(2, (2,), (16, 16), context_dim=context)
            gen = Generator(net, num_classes=context or None)
            disc = MLPDiscriminator((2,), (16,), context_dim=context)
            return gen, NonSaturatingGAN(disc, record=record)

    plain, plain_loss = _trajectory(False, build, data, batch_size=batch)
    recorded, loss = _trajectory(True, build, data, batch_size=batch)
    assert plain_loss.runs.fallback_reason is not None and not plain_loss.runs.recorded
    assert loss.runs.recorded, loss.runs.fallback_reason
    # 12 runs: seen, recorded, 2 checks through Pyro, then 8 replays
    assert next(iter(loss.runs._programs.values())).calls == 12 - 2
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded))


def test_a_replay_gives_the_pyro_run_s_examples_and_gradients_without_running_the_model():
    gen = Generator(MLPGenerator(3, (2,), (8,)))
    calls = []

    def model(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return gen.model(*args, **kwargs)

    runs, x = RecordedRuns(check_steps=0), torch.rand(5, 2)
    for _ in range(2):  # seen, then recorded
        runs(model, gen.guide, (x,), {})
    state = torch.get_rng_state()
    with pyro.poutine.trace(param_only=True) as capture:
        replayed = runs(model, gen.guide, (x,), {})["x"]
    assert len(calls) == 2 and runs.recorded  # the replay ran no Pyro model
    torch.set_rng_state(state)
    expected = RecordedRuns(backend="pyro")(model, gen.guide, (x,), {})["x"]
    assert torch.equal(replayed.value, expected.value) and replayed.obs is x
    grads = torch.autograd.grad(replayed.value.square().sum(), list(gen.net.parameters()))
    reference = torch.autograd.grad(expected.value.square().sum(), list(gen.net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(grads, reference))
    # the param sites SVI and fit find the parameters to update in
    found = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
    assert found == set(gen.net.parameters())


def test_svi_trains_the_generator_through_the_replayed_run():
    # SVI updates the parameters its param-only trace sees: a replay must announce them.
    gen = Generator(MLPGenerator(2, (2,), (8,)))
    loss = WassersteinGP(MLPDiscriminator((2,), (8,)), n_critic=1)
    svi = pyro.infer.SVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 1e-2}), loss=loss)
    x = torch.randn(16, 2)
    for _ in range(4):
        svi.step(x)
    before = _state(gen.net)
    for _ in range(3):
        svi.step(x)
    assert loss.runs.recorded
    assert all(not torch.equal(a, b) for a, b in zip(before, _state(gen.net)))


def test_a_flow_prior_and_a_cyclegan_replay_their_pyro_runs():
    def build(record: bool):  # noqa: ANN202
        prior = Flow((2,), [affine_coupling(2, hidden_dims=[8]), affine_coupling(2, parity=1)])
        net = MLPGenerator(2, (2,), (8,))
        return Generator(net, prior=prior), NonSaturatingGAN(
            MLPDiscriminator((2,), (8,)), record=record
        )

    data = torch.rand(48, 2)
    plain, _ = _trajectory(False, build, data, batch_size=16)
    recorded, loss = _trajectory(True, build, data, batch_size=16)
    assert loss.runs.recorded, loss.runs.fallback_reason
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded))

    def build_cycle(record: bool):  # noqa: ANN202
        cyc = CycleGAN(torch.nn.Linear(2, 3), torch.nn.Linear(3, 2), (2,), (3,))
        disc = (torch.nn.Linear(2, 1), torch.nn.Linear(3, 1))
        return cyc, CycleGANLoss(*disc, record=record)

    pair = {"x": torch.rand(48, 2), "y": torch.rand(48, 3)}
    plain, _ = _trajectory(False, build_cycle, pair, batch_size=16)
    recorded, loss = _trajectory(True, build_cycle, pair, batch_size=16)
    assert loss.runs.recorded, loss.runs.fallback_reason
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded))


class _Growing(Generator):
    """A generator that adds a site after a few runs (a structure a recording cannot hold)."""

    runs = 0

    def model(self, x=None, y=None, num_samples=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self.runs += 1
        if self.runs > 4:
            pyro.sample("extra", dist.Normal(0.0, 1.0))
        return super().model(x, y, num_samples, **kwargs)


class _Gamma(Generator):
    """Its latent scale is Gamma distributed: not standard noise pushed through ops."""

    def model(self, x=None, y=None, num_samples=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
        pyro.sample("s", dist.Gamma(torch.tensor(2.0), 1.0))
        return super().model(x, y, num_samples, **kwargs)


class _Branching(Generator):
    """Branches on the data's value, which changes between the batches."""

    def model(self, x=None, y=None, num_samples=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
        out = super().model(x, y, num_samples, **kwargs)
        if x.mean() > 0:
            pyro.deterministic("shifted", out + 1.0, event_dim=1)
        return out


@pytest.mark.parametrize(
    ("cls", "reason"),
    [
        (_Growing, "structure changed between runs: the site set changed"),
        (_Gamma, "random op aten._standard_gamma"),
        (_Branching, "a tensor value the model branched on changed"),
    ],
)
def test_models_a_recording_cannot_stand_for_run_through_pyro_with_one_log_line(
    cls: type, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    signs = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0])
    data = signs[:, None, None] * torch.rand(8, 4, 2)  # 8 batches of 4, the last two < 0

    def build(record: bool):  # noqa: ANN202
        gen = cls(MLPGenerator(2, (2,), (8,)))
        return gen, NonSaturatingGAN(MLPDiscriminator((2,), (8,)), record=record)

    plain, _ = _trajectory(False, build, list(data), epochs=1)
    with caplog.at_level(logging.WARNING, logger="pyro_gen"):
        recorded, loss = _trajectory(True, build, list(data), epochs=1)
    assert reason in loss.runs.fallback_reason
    lines = [r.getMessage() for r in caplog.records if "recorded run is off" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0]
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded))


def test_a_python_number_the_model_reads_is_checked_against_the_recording():
    # a user's model whose observation noise is a closure's number, annealed during training:
    # the recording holds the old value, and the next check's comparison must catch it
    pyro.clear_param_store()
    torch.manual_seed(0)
    net, noise = torch.nn.Linear(3, 2), {"scale": 0.5}

    def model(x):  # noqa: ANN001, ANN202
        pyro.module("g", net)
        with pyro.plate("N", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
            pyro.sample("obs", dist.Normal(net(z), noise["scale"]).to_event(1), obs=x)

    def guide(x):  # noqa: ANN001, ANN202
        pass

    runs, x = RecordedRuns(check_steps=1, check_every=3), torch.rand(4, 2)
    for _ in range(4):  # seen, recorded, checked, replayed
        runs(model, guide, (x,), {})
    assert runs.recorded
    noise["scale"] = 0.01
    runs(model, guide, (x,), {})  # the recording's third run: checked
    assert runs.fallback_reason is not None and "'obs'" in runs.fallback_reason
    pyro.set_rng_seed(3)
    value = runs(model, guide, (x,), {})["obs"].value
    pyro.set_rng_seed(3)
    z = dist.Normal(0.0, 1.0).expand([4, 3]).sample()
    spread = (value - net(z)).abs().max()
    assert spread < 0.1  # the new scale's draws, not the recorded 0.5's


def test_other_handlers_see_the_model_s_sites_and_a_cleared_param_store_records_again():
    gen = Generator(MLPGenerator(2, (2,), (8,)))
    runs, x = RecordedRuns(check_steps=0), torch.rand(4, 2)
    for _ in range(3):
        runs(gen.model, gen.guide, (x,), {})
    assert runs.recorded
    with pyro.poutine.trace() as tr:
        runs(gen.model, gen.guide, (x,), {})
    assert {"z", "x"} <= set(tr.trace.nodes)  # run through Pyro, under the user's handler
    pyro.clear_param_store()  # new tensors under the same names once registered again
    gen.net = MLPGenerator(2, (2,), (8,))
    runs(gen.model, gen.guide, (x,), {})
    assert not runs._programs  # the old recording's parameters are gone
    runs(gen.model, gen.guide, (x,), {})  # seen again ...
    sites = runs(gen.model, gen.guide, (x,), {})  # ... and recorded again
    assert runs.recorded and sites["x"].value.grad_fn is not None
    params = next(iter(runs._programs.values())).params
    assert set(params) == set(gen.net.parameters())


def test_bad_backend_and_bad_labels_get_one_clear_error():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        RecordedRuns(backend="tpu")
    gen = Generator(MLPGenerator(2, (2,), (8,), context_dim=3), num_classes=3)
    runs, x = RecordedRuns(), torch.rand(4, 2)
    for _ in range(5):
        runs(gen.model, gen.guide, (x,), {"y": torch.tensor([0, 1, 2, 1])})
    assert runs.recorded
    with pytest.raises(ValueError, match=r"labels y must be whole numbers in 0..2 .* got 0..3"):
        runs(gen.model, gen.guide, (x,), {"y": torch.tensor([0, 1, 3, 1])})


def test_held_out_batches_get_their_own_recording_and_changing_shapes_fall_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def build(record: bool):  # noqa: ANN202
        gen = Generator(MLPGenerator(2, (2,), (8,)))
        return gen, NonSaturatingGAN(MLPDiscriminator((2,), (8,)), record=record)

    # train batches of 16 and a last one of 8; held-out batches of 24 in eval mode
    data, held_out = torch.rand(56, 2), torch.rand(24, 2)
    plain, _ = _trajectory(False, build, data, batch_size=16, eval_data=held_out)
    recorded, loss = _trajectory(True, build, data, batch_size=16, eval_data=held_out)
    assert loss.runs.recorded and len(loss.runs._programs) == 3
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded))

    gen, runs = Generator(MLPGenerator(2, (2,), (8,))), RecordedRuns(max_programs=2)
    with caplog.at_level(logging.WARNING, logger="pyro_gen"):
        for n in (4, 4, 5, 5, 6):
            sites = runs(gen.model, gen.guide, (torch.rand(n, 2),), {})
    assert sites["x"].value.shape == (6, 2)
    assert "keep changing (3 distinct input signatures" in runs.fallback_reason
    assert sum("recorded run is off" in r.getMessage() for r in caplog.records) == 1
