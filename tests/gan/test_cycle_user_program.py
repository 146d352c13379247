"""CycleGANLoss on a user's own translation model written in Pyro (the CycleGAN site names,
a plate that subsamples the unpaired data itself, a mask, ``poutine.scale``), against the
objective written out by hand: the translators' loss and gradients, and one SGD step of
each discriminator on the examples the mask keeps."""

from __future__ import annotations

import functools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_gen.gan import CycleGANLoss

DTYPE = torch.float64
N, B, SCALE, WEIGHT = 12, 5, 0.5, 3.0


def user_program():  # noqa: ANN201
    g, f = nn.Linear(2, 2).to(DTYPE), nn.Linear(2, 2).to(DTYPE)

    def model(a, b, keep):  # noqa: ANN001, ANN202
        pyro.module("g", g)
        pyro.module("f", f)
        with (
            pyro.plate("data", N, subsample_size=B) as idx,
            poutine.scale(scale=SCALE),
            poutine.mask(mask=keep[idx]),
        ):
            fake_b, fake_a = g(a[idx]), f(b[idx])
            pyro.sample("y", dist.Delta(fake_b, event_dim=1), obs=b[idx])
            pyro.sample("x", dist.Delta(fake_a, event_dim=1), obs=a[idx])
            pyro.deterministic("x_cycle", f(fake_b), event_dim=1)
            pyro.deterministic("y_cycle", g(fake_a), event_dim=1)

    return g, f, model, lambda *args: None


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(N, 2, generator=gen, dtype=DTYPE)
    b = torch.randn(N, 2, generator=gen, dtype=DTYPE) + 2.0
    return a, b, torch.arange(N) % 3 != 0


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "pyro"])
def test_the_translators_loss_and_each_discriminator_step_are_the_hand_written_ones(record):
    g, f, model, guide = user_program()
    args = data()
    d_a, d_b = nn.Linear(2, 1).to(DTYPE), nn.Linear(2, 1).to(DTYPE)
    before = [[p.detach().clone().requires_grad_() for p in d.parameters()] for d in (d_a, d_b)]
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    loss = CycleGANLoss(d_a, d_b, cycle_weight=WEIGHT, optim=sgd, record=record)
    pyro.set_rng_seed(2)
    value = loss.loss_and_grads(model, guide, *args)
    got = [p.grad.clone() for p in (*g.parameters(), *f.parameters())]

    pyro.set_rng_seed(2)
    idx = poutine.trace(model).get_trace(*args).nodes["data"]["value"]
    a, b, keep = args[0][idx], args[1][idx], args[2][idx]

    def d(i: int, x: torch.Tensor) -> torch.Tensor:  # a discriminator as it was before
        w, bias = before[i]
        return (x @ w.T + bias).squeeze(-1)

    # each discriminator: least squares on the kept examples, one SGD step
    for i, (real, fake) in enumerate([(a, f(b)), (b, g(a))]):
        real, fake = real[keep], fake[keep].detach()
        d_loss = 0.5 * ((d(i, real) - 1) ** 2).mean() + 0.5 * (d(i, fake) ** 2).mean()
        grads = torch.autograd.grad(d_loss, before[i])
        for p, p0, grad in zip((d_a, d_b)[i].parameters(), before[i], grads):
            torch.testing.assert_close(p.detach(), p0.detach() - 0.1 * grad, rtol=1e-12, atol=1e-14)
        before[i] = [p.detach().clone() for p in (d_a, d_b)[i].parameters()]  # updated
    # the translators against the updated discriminators, Pyro's N / B and scale, the mask
    fake_b, fake_a = g(a), f(b)
    per_example = 0.5 * (d(1, fake_b) - 1) ** 2 + 0.5 * (d(0, fake_a) - 1) ** 2
    cycle = (f(fake_b) - a).abs().mean(-1) + (g(fake_a) - b).abs().mean(-1)
    expected = (N / B) * SCALE * (per_example + WEIGHT * cycle)[keep].sum()
    grads = torch.autograd.grad(expected, [*g.parameters(), *f.parameters()])
    assert value == pytest.approx(expected.item(), rel=1e-12)
    for x, y in zip(got, grads):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-13)
