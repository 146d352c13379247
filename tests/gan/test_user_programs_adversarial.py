"""pyro_gen's adversarial losses dropped unchanged into a user's own Pyro program: a generator
written as a plain Pyro model (``pyro.module``, a Delta-observed ``pyro.sample`` in a plate),
the user's own networks, trained by Pyro's ``SVI`` and by ``fit``.

Checked against: Pyro's own ``SVI`` on the same seed (``fit(compile=False)`` bit for bit, with
the recorded run and through Pyro); the same program stepped with its labels by position, by
name, as tuples, dicts and a DataLoader (bit for bit, and the labels the user's discriminator
saw are the batch's, as integers); the loss and gradients written out by hand with autograd
(float64 networks under an outer plate); a straight run against a run resumed from fit's
checkpoint; the param store saved and loaded into a fresh network.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive
from torch import nn
from torch.nn import functional as F

from pyro_gen.gan import NonSaturatingGAN, WassersteinGP
from pyro_gen.infer import fit
from tests.gan.user_networks import Critic, mlp


def program(dtype: torch.dtype = torch.float32):
    """A user's generator network and the Pyro model and guide written around it."""
    g = mlp(2, 2).to(dtype)

    def model(x=None, n=None):  # noqa: ANN001, ANN202
        pyro.module("gen", g)
        with pyro.plate("data", x.shape[0] if x is not None else n):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=dtype), 1.0).to_event(1))
            return pyro.sample("x", dist.Delta(g(z), event_dim=1), obs=x)

    def guide(x=None, n=None):  # noqa: ANN001, ANN202
        pass

    return g, model, guide


def _state(*modules: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


LOSSES = {
    "nonsaturating": lambda record: NonSaturatingGAN(Critic(), record=record),
    "wgan-gp": lambda record: WassersteinGP(Critic(), n_critic=2, record=record),
}


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "pyro"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_fit_without_compile_takes_pyro_svi_steps_on_a_users_generator(name, record):
    batches = [(x,) for x in (torch.randn(48, 2) * 0.5 + 1.0).split(16)]

    def run(train):  # noqa: ANN001, ANN202
        pyro.clear_param_store()
        torch.manual_seed(0)
        g, model, guide = program()
        loss = LOSSES[name](record)
        pyro.set_rng_seed(1)
        train(model, guide, loss)
        return g, loss, _state(g, loss)

    def svi(model, guide, loss):  # noqa: ANN001, ANN202
        step = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), loss)
        for _ in range(3):
            for batch in batches:
                step.step(*batch)

    def with_fit(model, guide, loss):  # noqa: ANN001, ANN202
        optim = pyro.optim.Adam({"lr": 1e-2})
        fit(model, batches, guide=guide, epochs=3, optim=optim, loss=loss, compile=False,
            progress=False)  # fmt: skip

    *_, expected = run(svi)
    g, loss, got = run(with_fit)
    assert _same(got, expected)
    assert loss.runs.recorded == record, loss.runs.fallback_reason
    # the param store holds the user's generator alone: the discriminator is the loss's
    assert {k.split("$$$")[0] for k in pyro.get_param_store()} == {"gen"}
    # Predictive on the trained program: x is the user's network at the drawn z
    draws = Predictive(program_model(g), num_samples=3)(n=5)
    assert draws["x"].shape == (3, 5, 2)
    torch.testing.assert_close(draws["x"], g(draws["z"]).detach())


def program_model(g: nn.Module):  # noqa: ANN201
    """The model of :func:`program` around an existing network."""

    def model(x=None, n=None):  # noqa: ANN001, ANN202
        pyro.module("gen", g)
        with pyro.plate("data", x.shape[0] if x is not None else n):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            return pyro.sample("x", dist.Delta(g(z), event_dim=1), obs=x)

    return model


class LabelGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.net = nn.Embedding(3, 2), mlp(4, 2)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.embed(labels)], -1))


class LabelCritic(nn.Module):
    """A user's conditional discriminator: embeds integer labels, keeps what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.net = nn.Embedding(3, 2), mlp(4, 1)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.seen.append(labels)
        return self.net(torch.cat([x, self.embed(labels)], -1)).squeeze(-1)


def conditional_program():  # noqa: ANN201
    g = LabelGenerator()

    def model(x, y):  # noqa: ANN001, ANN202
        pyro.module("gen", g)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            return pyro.sample("x", dist.Delta(g(z, y), event_dim=1), obs=x)

    def guide(x, y):  # noqa: ANN001, ANN202
        pass

    return g, model, guide


def test_labels_reach_a_users_discriminator_whichever_way_the_program_is_called():
    x, y = torch.randn(32, 2), torch.arange(32) % 3
    batches = list(zip(x.split(8), y.split(8)))
    # a DataLoader draws its base seed from torch's RNG at each pass, shuffled or not: the
    # loop over it is compared with fit over it
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    forms = {
        "svi, by position": lambda step: [step(xb, yb) for xb, yb in batches],
        "svi, by name": lambda step: [step(xb, y=yb) for xb, yb in batches],
        "fit, tuples": list(batches),
        "fit, dicts": [{"x": xb, "y": yb} for xb, yb in batches],
        "svi, DataLoader": lambda step: [step(xb, yb) for xb, yb in loader],
        "fit, DataLoader": loader,
    }
    states, seen = {}, {}
    for form, data in forms.items():
        pyro.clear_param_store()
        torch.manual_seed(0)
        g, model, guide = conditional_program()
        loss = NonSaturatingGAN(LabelCritic())
        optim = pyro.optim.Adam({"lr": 1e-2})
        pyro.set_rng_seed(1)
        if callable(data):
            data(SVI(model, guide, optim, loss).step)
        else:
            fit(model, data, guide=guide, epochs=1, optim=optim, loss=loss, compile=False,
                progress=False)  # fmt: skip
        states[form] = _state(g, loss)
        seen[form] = loss.discriminator.seen
    for form in forms:
        reference = "svi, DataLoader" if "DataLoader" in form else "svi, by name"
        assert _same(states[form], states[reference]), form
        # each update scores real and generated examples, and the generator's loss scores
        # the generated ones again: three calls per batch, each with the batch's own labels
        labels = seen[form]
        assert len(labels) == 3 * len(batches), form
        for i, got in enumerate(labels):
            assert got.dtype == torch.int64 and torch.equal(got, batches[i // 3][1]), form


def test_labels_and_a_discriminator_that_do_not_meet_are_one_clear_error():
    g = LabelGenerator()

    def model(x, labels):  # noqa: ANN001, ANN202 - not the convention's name y
        pyro.module("gen", g)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            return pyro.sample("x", dist.Delta(g(z, labels), event_dim=1), obs=x)

    svi = SVI(model, lambda x, labels: None, pyro.optim.Adam({}), NonSaturatingGAN(LabelCritic()))
    with pytest.raises(TypeError, match=r"called as D\(x\).*argument y"):
        svi.step(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))
    # and labels y for a discriminator that takes none
    g, model, guide = conditional_program()
    svi = SVI(model, guide, pyro.optim.Adam({}), NonSaturatingGAN(Critic()))
    with pytest.raises(TypeError, match=r"called as D\(x, y\).*argument y"):
        svi.step(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))


class RowCritic(Critic):
    """A user's discriminator written for a batch of rows ``(batch, 2)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.view(x.shape[0], -1)).squeeze(-1)


def test_float64_networks_under_an_outer_plate_give_the_hand_written_loss_and_gradients():
    dtype = torch.float64
    g = mlp(2, 2).to(dtype)

    def model(x):  # noqa: ANN001, ANN202
        pyro.module("gen", g)
        with pyro.plate("groups", x.shape[0], dim=-2), pyro.plate("data", x.shape[1], dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=dtype), 1.0).to_event(1))
            return pyro.sample("x", dist.Delta(g(z), event_dim=1), obs=x)

    def guide(x):  # noqa: ANN001, ANN202
        pass

    x = torch.randn(3, 5, 2, dtype=dtype)
    # the discriminator frozen, so only the generator's gradients come; it takes the
    # examples of both plates as rows
    loss = NonSaturatingGAN(RowCritic().to(dtype), record=False)
    loss.discriminator.requires_grad_(False)
    pyro.set_rng_seed(4)
    with poutine.trace(param_only=True) as params:
        value = loss.loss_and_grads(model, guide, x)
    got = [p.grad.clone() for p in g.parameters()]
    # by hand: the same draws, the generator's loss summed over both plates
    g.zero_grad()
    pyro.set_rng_seed(4)
    fake = poutine.trace(poutine.uncondition(model)).get_trace(x).nodes["x"]["value"]
    assert fake.dtype == dtype and fake.shape == x.shape
    expected = F.softplus(-loss.discriminator(fake.reshape(-1, 2))).sum()
    grads = torch.autograd.grad(expected, list(g.parameters()))
    expected = expected.detach()
    assert value == pytest.approx(expected.item(), rel=1e-12)
    for a, b in zip(got, grads):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert {s["name"].split("$$$")[0] for s in params.trace.nodes.values()} == {"gen"}
    # trained, the discriminator's steps run in float64 too
    loss.discriminator.requires_grad_(True)
    loss.loss_and_grads(model, guide, x)
    assert loss.last_discriminator_loss.dtype == dtype


def test_a_resumed_run_of_a_users_program_is_the_straight_run(tmp_path):
    x = torch.randn(64, 2)

    def run(steps, seed, **kwargs):  # noqa: ANN001, ANN003, ANN202
        pyro.clear_param_store()
        torch.manual_seed(0)
        g, model, guide = program()
        loss = WassersteinGP(Critic(), n_critic=2)
        pyro.set_rng_seed(seed)
        fit(model, x, guide=guide, steps=steps, batch_size=16, loss=loss, progress=False,
            **kwargs)  # fmt: skip
        return _state(g, loss), loss.optimizer.state_dict()["state"]

    straight, opt = run(8, seed=3)
    run(3, seed=3, checkpoint_dir=tmp_path)
    # a fresh process: other seeds, fresh networks; the checkpoint holds all that matters
    resumed, opt_resumed = run(8, seed=99, checkpoint_dir=tmp_path)
    assert _same(resumed, straight)
    assert all(torch.equal(opt[k]["exp_avg"], opt_resumed[k]["exp_avg"]) for k in opt)


def test_the_saved_param_store_restores_a_users_generator(tmp_path):
    g, model, guide = program()
    fit(model, torch.randn(32, 2), guide=guide, steps=3, batch_size=16,
        loss=NonSaturatingGAN(Critic()), progress=False)  # fmt: skip
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    g2 = mlp(2, 2)
    pyro.get_param_store().load(tmp_path / "params.pt")
    # as Pyro's docs restore a module from a saved store
    pyro.module("gen", g2, update_module_params=True)
    assert _same(_state(g2), _state(g))
    draws = Predictive(program_model(g2), num_samples=1)(n=6)
    torch.testing.assert_close(draws["x"], g(draws["z"]).detach())


def test_a_generator_of_discrete_draws_is_refused_and_its_relaxation_trains():
    g = nn.Linear(2, 4)

    def model(x, relaxed=False):  # noqa: ANN001, ANN202
        pyro.module("gen", g)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            logits = g(z)
            if relaxed:
                law = dist.RelaxedBernoulliStraightThrough(torch.tensor(0.5), logits=logits)
            else:
                law = dist.Bernoulli(logits=logits)
            return pyro.sample("x", law.to_event(1), obs=x)

    x = (torch.rand(16, 4) > 0.5).float()
    disc = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))
    loss = NonSaturatingGAN(disc)
    before = _state(g, disc)
    svi = SVI(model, lambda x, relaxed=False: None, pyro.optim.Adam({"lr": 0.1}), loss)
    # a Bernoulli's draws carry no gradient: training would move the discriminator alone
    with pytest.raises(ValueError, match="Bernoulli, which has no reparameterized sampler"):
        svi.step(x)
    assert _same(_state(g, disc), before)
    # the relaxation the error names trains the generator through its draws
    svi.step(x, relaxed=True)
    assert not any(torch.equal(a, b) for a, b in zip(_state(g), before))


def test_labels_of_the_whole_data_set_beside_a_subsampled_batch_are_one_clear_error():
    g = LabelGenerator()

    def model(x, y):  # noqa: ANN001, ANN202 - subsamples inside, as Pyro's examples do
        pyro.module("gen", g)
        with pyro.plate("data", x.shape[0], subsample_size=8) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            return pyro.sample("x", dist.Delta(g(z, y[idx]), event_dim=1), obs=x[idx])

    loss = NonSaturatingGAN(LabelCritic())
    svi = SVI(model, lambda x, y: None, pyro.optim.Adam({}), loss)
    with pytest.raises(ValueError, match="labels y hold 100 rows but .* 8 examples"):
        svi.step(torch.randn(100, 2), torch.arange(100) % 3)
    assert loss.discriminator.seen == []  # refused before the discriminator met them


def test_a_pyro_module_discriminator_takes_the_nn_module_ones_steps():
    """A ``PyroModule`` discriminator enters the param store (as every PyroModule does) and the
    SVI loop's Pyro optimizer holds a state for it; no generator gradient reaches it, so the
    generator and discriminator take exactly the steps of a plain ``nn.Module`` critic."""
    from pyro.nn import PyroModule

    def run(pyro_module: bool) -> tuple[list[torch.Tensor], list[str]]:
        pyro.clear_param_store()
        torch.manual_seed(0)
        g, model, guide = program()
        critic = Critic()
        if pyro_module:
            pyro_critic = PyroModule[Critic]()
            pyro_critic.load_state_dict(critic.state_dict())
            critic = pyro_critic
        torch.manual_seed(1)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), NonSaturatingGAN(critic))
        x = torch.randn(16, 2)
        for _ in range(4):
            svi.step(x)
        return _state(g, critic), sorted(pyro.get_param_store().keys())

    plain, plain_names = run(False)
    pyro_made, pyro_names = run(True)
    assert plain_names == ["gen$$$0.bias", "gen$$$0.weight", "gen$$$2.bias", "gen$$$2.weight"]
    assert set(pyro_names) - set(plain_names)  # the PyroModule's parameters were registered
    assert all(torch.equal(a, b) for a, b in zip(plain, pyro_made, strict=True))
