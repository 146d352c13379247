"""Every adversarial loss on a user's own Pyro program with the Pyro idioms a user writes
around a generator: a plate that subsamples its data itself (``subsample_size``), a mask,
``poutine.scale``, a second observed site and a reparameterized Normal observation, labels
under the user's own argument name.

Checked against: the generator's loss and gradients written out by hand with autograd (the
discriminator frozen), one discriminator step written out by hand (its loss, the gradient
penalty by autograd, weight clipping, plain SGD), and the same program with its labels named
``y`` (bit for bit).
"""

from __future__ import annotations

import functools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI
from torch import nn
from torch.nn import functional as F

from pyro_gen.gan import (
    HingeGAN,
    LeastSquaresGAN,
    MinimaxGAN,
    NonSaturatingGAN,
    WassersteinGAN,
    WassersteinGP,
)

DTYPE = torch.float64
N, B = 12, 5  # data set size, subsample size
SCALE = 0.5  # the user's poutine.scale


def mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, 8), nn.Tanh(), nn.Linear(8, n_out)).to(DTYPE)


class Critic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


# the objectives as the papers write them: (discriminator's loss, generator's per example)
BY_HAND = {
    MinimaxGAN: (
        lambda r, f: -(torch.sigmoid(r).log().mean() + (1 - torch.sigmoid(f)).log().mean()),
        lambda f: (1 - torch.sigmoid(f)).log(),
    ),
    NonSaturatingGAN: (
        lambda r, f: -(torch.sigmoid(r).log().mean() + (1 - torch.sigmoid(f)).log().mean()),
        lambda f: -torch.sigmoid(f).log(),
    ),
    LeastSquaresGAN: (
        lambda r, f: 0.5 * (r - 1).pow(2).mean() + 0.5 * f.pow(2).mean(),
        lambda f: 0.5 * (f - 1).pow(2),
    ),
    HingeGAN: (
        lambda r, f: (1 - r).clamp(min=0).mean() + (1 + f).clamp(min=0).mean(),
        lambda f: -f,
    ),
    WassersteinGAN: (lambda r, f: f.mean() - r.mean(), lambda f: -f),
    WassersteinGP: (lambda r, f: f.mean() - r.mean(), lambda f: -f),
}
SGD = functools.partial(torch.optim.SGD, lr=0.1)


def make(cls: type, record: bool, model, guide, args) -> nn.Module:  # noqa: ANN001
    """The loss on site x; recorded, after a first call that records the model's run (its
    discriminator frozen for it), so the checked call is the replay."""
    kwargs = {"clip": 0.3} if cls is WassersteinGAN else {}  # binding after one step
    loss = cls(Critic(), optim=SGD, n_critic=1, site="x", record=record, **kwargs)
    if record:
        loss.discriminator.requires_grad_(False)
        loss.loss_and_grads(model, guide, *args)
        loss.discriminator.requires_grad_(True)
    return loss


RECORD = pytest.mark.parametrize("record", [True, False], ids=["recorded", "pyro"])


def user_program():  # noqa: ANN201
    """A generator with two observed sites: ``x`` (Delta) is judged, ``w`` (a Normal on the
    same output) is the user's other data; the model subsamples, masks and scales."""
    g = mlp(2, 2)

    def model(x, w, keep):  # noqa: ANN001, ANN202
        pyro.module("gen", g)
        with pyro.plate("data", N, subsample_size=B) as idx, poutine.scale(scale=SCALE):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=DTYPE), 1.0).to_event(1))
            out = g(z)
            with poutine.mask(mask=keep[idx]):
                pyro.sample("x", dist.Delta(out, event_dim=1), obs=x[idx])
            pyro.sample("w", dist.Normal(out[:, 0], 0.1), obs=w[idx])

    def guide(x, w, keep):  # noqa: ANN001, ANN202
        pass

    return g, model, guide


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 2, generator=gen, dtype=DTYPE) + 1.0
    keep = torch.arange(N) % 3 != 1
    return x, x[:, 0] + 0.1, keep


def run_by_hand(model, args, seed):  # noqa: ANN001, ANN201
    """The subsample, the generated examples and the data of site x for one run of the
    model with its observations removed, on the seed the loss ran it with."""
    pyro.set_rng_seed(seed)
    tr = poutine.trace(poutine.uncondition(model)).get_trace(*args)
    site = tr.nodes["x"]
    return tr.nodes["data"]["value"], site["value"], site["infer"]["obs"]


@RECORD
@pytest.mark.parametrize("cls", list(BY_HAND), ids=lambda c: c.__name__)
def test_the_generators_loss_and_gradients_are_the_hand_written_ones(cls, record):
    g, model, guide = user_program()
    args = data()
    loss = make(cls, record, model, guide, args)
    loss.discriminator.requires_grad_(False)  # the generator trains against it as it is
    g.zero_grad()
    pyro.set_rng_seed(3)
    value = loss.loss_and_grads(model, guide, *args)
    assert loss.runs.recorded == record, loss.runs.fallback_reason
    got = [p.grad.clone() for p in g.parameters()]
    g.zero_grad()
    idx, fake, _ = run_by_hand(model, args, seed=3)
    keep = args[2][idx]
    # Pyro's ELBO weights: the subsample's N / B, the user's scale; masked examples drop out
    per_example = BY_HAND[cls][1](loss.discriminator(fake))
    expected = (N / B) * SCALE * per_example[keep].sum()
    grads = torch.autograd.grad(expected, list(g.parameters()))
    assert value == pytest.approx(expected.item(), rel=1e-12)
    for a, b in zip(got, grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


@RECORD
@pytest.mark.parametrize("cls", list(BY_HAND), ids=lambda c: c.__name__)
def test_one_discriminator_step_is_the_hand_written_one(cls, record):
    g, model, guide = user_program()
    args = data()
    loss = make(cls, record, model, guide, args)
    before = [p.detach().clone() for p in loss.discriminator.parameters()]
    pyro.set_rng_seed(4)
    loss.loss_and_grads(model, guide, *args)
    assert loss.runs.recorded == record, loss.runs.fallback_reason
    idx, fake, real = run_by_hand(model, args, seed=4)
    keep = args[2][idx]
    # the discriminator learns from the examples the mask keeps, each weighted alike
    real, fake = real[keep], fake[keep].detach()
    d = Critic()
    d.load_state_dict(dict(zip(dict(d.named_parameters()), before)))
    d_loss = BY_HAND[cls][0](d(real), d(fake))
    if cls is WassersteinGP:
        # the interpolation weights are the next draws after the model's run
        run_by_hand(model, args, seed=4)
        eps = torch.rand(int(keep.sum()), dtype=DTYPE)[:, None]
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(d(x_hat).sum(), x_hat, create_graph=True)
        d_loss = d_loss + 10.0 * ((grad.pow(2).sum(-1).sqrt() - 1) ** 2).mean()
    grads = torch.autograd.grad(d_loss, list(d.parameters()))
    for p, p0, grad in zip(loss.discriminator.parameters(), before, grads):
        expected = p0 - 0.1 * grad
        if cls is WassersteinGAN:
            expected = expected.clamp(-0.3, 0.3)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(loss.last_discriminator_loss, d_loss.detach(), rtol=1e-12, atol=0)


class LabelCritic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.context_dim = 3
        self.net = mlp(5, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, context], -1)).squeeze(-1)


def conditional_program(label_name: str):  # noqa: ANN201
    """The same conditional generator, its labels argument named ``label_name``."""
    g = mlp(5, 2)

    def body(x, labels):  # noqa: ANN001, ANN202
        pyro.module("gen", g)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=DTYPE), 1.0).to_event(1))
            c = F.one_hot(labels, 3).to(DTYPE)
            pyro.sample("x", dist.Delta(g(torch.cat([z, c], -1)), event_dim=1), obs=x)

    namespace: dict = {"body": body}
    exec(f"def model(x, {label_name}):\n    body(x, {label_name})", namespace)
    return g, namespace["model"], lambda *args, **kwargs: None


@pytest.mark.parametrize("cls", list(BY_HAND), ids=lambda c: c.__name__)
def test_labels_under_the_users_own_argument_name_reach_the_discriminator(cls):
    x, y = torch.randn(8, 2, dtype=DTYPE), torch.arange(8) % 3

    def train(label_name: str, by_name: bool) -> list[torch.Tensor]:
        pyro.clear_param_store()
        torch.manual_seed(0)
        g, model, guide = conditional_program(label_name)
        loss = cls(LabelCritic(), n_critic=1, record=False, labels=label_name)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), loss)
        pyro.set_rng_seed(1)
        for _ in range(2):
            svi.step(x, **{label_name: y}) if by_name else svi.step(x, y)
        return [p.detach().clone() for m in (g, loss) for p in m.parameters()]

    expected = train("y", by_name=True)
    for by_name in (True, False):
        got = train("digit", by_name)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), by_name


def test_labels_under_another_name_without_labels_is_one_error_naming_the_option():
    _, model, guide = conditional_program("digit")
    loss = NonSaturatingGAN(LabelCritic())
    with pytest.raises(ValueError, match=r"called without labels y.*labels='digit'"):
        loss.loss_and_grads(model, guide, torch.randn(4, 2, dtype=DTYPE), torch.arange(4) % 3)
    with pytest.raises(ValueError, match="labels must name the model's argument"):
        NonSaturatingGAN(LabelCritic(), labels=3)


def particles_program(expand: bool):  # noqa: ANN201
    """The user's particles: a plate of 3 draws per example outside the data plate, the data
    broadcast over it as Pyro allows (or expanded to the generated shape by hand)."""
    g = mlp(2, 2)

    def model(x):  # noqa: ANN001, ANN202
        pyro.module("gen", g)
        with pyro.plate("particles", 3, dim=-2), pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=DTYPE), 1.0).to_event(1))
            obs = x.expand(3, *x.shape) if expand else x
            pyro.sample("x", dist.Delta(g(z), event_dim=1), obs=obs)

    return g, model, lambda x: None


@pytest.mark.parametrize("cls", list(BY_HAND), ids=lambda c: c.__name__)
def test_data_broadcast_over_the_users_particles_plate_are_each_particles_data(cls):
    x = torch.randn(6, 2, dtype=DTYPE)

    def train(expand: bool) -> list[torch.Tensor]:
        pyro.clear_param_store()
        torch.manual_seed(0)
        g, model, guide = particles_program(expand)
        loss = cls(Critic(), n_critic=2)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), loss)
        pyro.set_rng_seed(1)
        for _ in range(2):
            svi.step(x)
        return [p.detach().clone() for m in (g, loss) for p in m.parameters()]

    # before, the broadcast data were refused: "the data have shape (6, 2) but the model
    # generates (3, 6, 2); they must match"
    got, expected = train(expand=False), train(expand=True)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_data_that_do_not_broadcast_to_the_generated_shape_are_one_clear_error():
    _, model, guide = particles_program(expand=False)
    loss = NonSaturatingGAN(Critic())
    with pytest.raises(ValueError, match=r"\(6, 3, 2\).*generates \(3, 6, 2\).*broadcast"):
        loss.loss_and_grads(model, guide, torch.randn(6, 3, 2, dtype=DTYPE))


def test_particles_scaled_by_one_over_their_number_average_the_generators_loss():
    # the docstring's recipe for Pyro's vectorized-ELBO average over particles
    g, model, guide = particles_program(expand=False)
    x = torch.randn(6, 2, dtype=DTYPE)
    loss = NonSaturatingGAN(Critic(), record=False).requires_grad_(False)
    pyro.set_rng_seed(0)
    summed = loss.loss_and_grads(model, guide, x)
    pyro.set_rng_seed(0)
    averaged = loss.loss_and_grads(poutine.scale(model, scale=1 / 3), guide, x)
    assert averaged == pytest.approx(summed / 3, rel=1e-12)
