"""The GAN models inside the user's own plate over the examples, Pyro's minibatch idiom:
``with pyro.plate("data", N, subsample=idx): gen.model(x[idx])`` (or any other name). The
Generator and CycleGAN opened their own ``pyro.plate("data")`` and met "Multiple sample sites
named 'data'" (the same name) or "plates 'data' and 'batch' collide at dim=-1" (another
name). The user's plate is now theirs over the examples: the adversarial losses, which read
each observed site's scale, score the flat batch's loss scaled by ``N / B`` (same draws, same
seed), through Pyro and through a replayed recording, their gradients are the flat batch's
scaled alike, and a plate at dim -1 over other examples gets one error."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pytest
import torch
from torch import nn

from pyro_gen.gan import (
    CycleGAN,
    CycleGANLoss,
    Generator,
    NonSaturatingGAN,
    WassersteinGP,
)
from pyro_gen.nn import MLPDiscriminator, MLPGenerator
from tests.gan.user_networks import Critic

N, B = 40, 8
X = torch.randn(N, 2, generator=torch.Generator().manual_seed(0))
Y = torch.randn(N, 2, generator=torch.Generator().manual_seed(1))
LABELS = torch.arange(N) % 3
IDX = torch.arange(5, 5 + B)

LOSSES: dict[str, Callable[[bool], nn.Module]] = {
    "nonsaturating": lambda record: NonSaturatingGAN(Critic(), record=record),
    "wgan-gp": lambda record: WassersteinGP(Critic(), n_critic=2, record=record),
}


def _build(loss_name: str, record: bool) -> tuple[Generator, nn.Module]:
    pyro.clear_param_store()
    torch.manual_seed(0)  # the same weights for each build
    return Generator(MLPGenerator(3, (2,), hidden_dims=(8,))), LOSSES[loss_name](record)


def _within(part: Callable, plate_name: str) -> Callable:
    """The user's program: ``part`` on the rows ``IDX`` under their own subsampled plate."""

    def program(*args):
        with pyro.plate(plate_name, N, subsample=IDX):
            return part(*(a[IDX] for a in args))

    return program


def _losses(loss: nn.Module, model: Callable, guide: Callable, *args, steps: int) -> list:
    """The loss of ``steps`` evaluations on the same draws: a recording replaces the Pyro run
    from the second one on (record=True), and is replayed once its checks are done."""
    values = []
    for _ in range(steps):
        pyro.set_rng_seed(0)
        values.append(loss.loss(model, guide, *args))
    return values


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "pyro"])
@pytest.mark.parametrize("plate_name", ["data", "batch"])
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_the_users_subsampled_plate_scales_the_flat_batchs_generator_loss(
    loss_name, plate_name, record
):
    gen, loss = _build(loss_name, record)
    steps = 6 if record else 1  # sighting, recording, two checks, then replays
    flat = _losses(loss, gen.model, gen.guide, X[IDX], steps=steps)
    within = _losses(loss, _within(gen.model, plate_name), gen.guide, X, steps=steps)
    assert loss.runs.recorded is record  # the replays ran, not a fallback to Pyro
    assert flat[-1] != 0.0
    for f, w in zip(flat, within):
        assert w == pytest.approx(N / B * f, rel=1e-5)


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "pyro"])
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_a_training_step_under_the_users_plate_has_the_flat_gradients_scaled(loss_name, record):
    grads, critics = {}, {}
    for under_plate in (True, False):
        gen, loss = _build(loss_name, record)
        model = _within(gen.model, "data") if under_plate else gen.model
        data = X if under_plate else X[IDX]
        for _ in range(4):  # through the recording's checks, when recorded
            gen.zero_grad()
            pyro.set_rng_seed(0)
            loss.loss_and_grads(model, gen.guide, data)
        grads[under_plate] = [p.grad.clone() for p in gen.parameters()]
        critics[under_plate] = [p.detach().clone() for p in loss.discriminator.parameters()]
    # the discriminator's steps take means over the examples: the plate's scale is not theirs
    for a, b in zip(critics[True], critics[False]):
        torch.testing.assert_close(a, b)
    assert any(g.abs().sum() > 0 for g in grads[False])
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, N / B * b, rtol=1e-5, atol=1e-7)


def test_a_conditional_generator_takes_the_users_plate_with_its_labels():
    # the discriminator reads the labels the user's program is called with: the batch's,
    # with the subsample chosen outside (labels of all N examples meet adversarial.py's
    # "subsample outside it instead")
    def program(x, y):
        with pyro.plate("batch", N, subsample=IDX):
            return gen.model(x, y)

    values = {}
    for model in ("flat", "within"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        gen = Generator(MLPGenerator(3, (2,), hidden_dims=(8,), context_dim=3), num_classes=3)
        loss = NonSaturatingGAN(MLPDiscriminator(2, (8,), context_dim=3), record=False)
        call = gen.model if model == "flat" else program
        values[model] = _losses(loss, call, gen.guide, X[IDX], LABELS[IDX], steps=1)[0]
    assert values["within"] == pytest.approx(N / B * values["flat"], rel=1e-5)


def test_the_cycle_gans_loss_under_the_users_plate_is_the_flat_loss_scaled():
    torch.manual_seed(0)
    cyc = CycleGAN(nn.Linear(2, 2), nn.Linear(2, 2), (2,), (2,))
    loss = CycleGANLoss(nn.Linear(2, 1), nn.Linear(2, 1), cycle_weight=7.0, record=False)
    flat = _losses(loss, cyc.model, cyc.guide, X[IDX], Y[IDX], steps=1)
    for plate_name in ("data", "batch"):
        within = _losses(loss, _within(cyc.model, plate_name), cyc.guide, X, Y, steps=1)
        assert within[0] == pytest.approx(N / B * flat[0], rel=1e-5)


def test_generating_under_the_users_plate_draws_its_examples():
    gen, _ = _build("nonsaturating", record=False)
    with pyro.plate("draws", 5):
        assert gen.model(num_samples=5).shape == (5, 2)
    with pyro.plate("data", N, subsample=IDX):
        assert gen.model(num_samples=B).shape == (B, 2)


def test_a_plate_over_other_examples_is_one_error():
    gen, _ = _build("nonsaturating", record=False)
    cyc = CycleGAN(nn.Linear(2, 2), nn.Linear(2, 2), (2,), (2,))
    calls = {
        "Generator": lambda: gen.model(X[IDX]),
        "Generator generating": lambda: gen.model(num_samples=B),
        "CycleGAN": lambda: cyc.model(X[IDX], Y[IDX]),
    }
    for owner, call in calls.items():
        owner = owner.split()[0]
        with (
            pyro.plate("data", N),
            pytest.raises(ValueError, match=f"{owner} puts .* plate 'data' holds 40"),
        ):
            call()
