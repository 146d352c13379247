"""CycleGAN: the loss is the paper's objective term by term, it trains the translators (not
the discriminators) through fit, learns a known 1D translation, and resumes exactly."""

from __future__ import annotations

import functools

import pyro
import pytest
import torch
from torch import nn

from pyro_gen.gan import CycleGAN, CycleGANLoss
from pyro_gen.gan.adversarial import fused_adam
from pyro_gen.infer import fit


def affine_pair() -> CycleGAN:
    return CycleGAN(nn.Linear(1, 1), nn.Linear(1, 1), (1,), (1,))


def test_the_loss_is_the_least_squares_terms_plus_the_weighted_cycle_errors():
    torch.manual_seed(0)
    cyc = CycleGAN(nn.Linear(2, 3), nn.Linear(3, 2), (2,), (3,))
    dx, dy = nn.Linear(2, 1), nn.Linear(3, 1)
    loss = CycleGANLoss(dx, dy, cycle_weight=7.0).eval()  # eval: no discriminator step
    x, y = torch.randn(5, 2), torch.randn(5, 3)
    with torch.no_grad():
        fy, fx = cyc.g(x), cyc.f(y)
        adversarial = 0.5 * (dy(fy).squeeze(-1) - 1) ** 2 + 0.5 * (dx(fx).squeeze(-1) - 1) ** 2
        cycle = (cyc.f(fy) - x).abs().mean(-1) + (cyc.g(fx) - y).abs().mean(-1)
        expected = (adversarial + 7.0 * cycle).sum()
    value = loss.loss(cyc.model, cyc.guide, x, y)
    assert abs(value - float(expected)) < 1e-5


def test_a_training_call_steps_both_discriminators_and_leaves_gradients_on_the_translators():
    cyc = affine_pair()
    loss = CycleGANLoss(nn.Linear(1, 1), nn.Linear(1, 1))
    with pyro.poutine.trace(param_only=True) as tr:
        loss.loss_and_grads(cyc.model, cyc.guide, torch.randn(8, 1), torch.randn(8, 1))
    registered = {site["value"].unconstrained() for site in tr.trace.nodes.values()}
    assert registered == {*cyc.g.parameters(), *cyc.f.parameters()}
    assert all(p.grad is not None for p in registered)
    for term in (loss.x, loss.y):
        assert int(term.optimizer.state_dict()["state"][0]["step"]) == 1
        assert all(p.grad is None for p in term.discriminator.parameters())


def test_bad_batches_are_refused_by_name():
    cyc = affine_pair()
    with pytest.raises(ValueError, match="needs y="):
        cyc.model(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="same size"):
        cyc.model(torch.zeros(4, 1), torch.zeros(3, 1))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))


def train(steps: int, directory=None, seed: int = 0) -> tuple[CycleGAN, CycleGANLoss]:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    d_optim = functools.partial(fused_adam, lr=1e-2, betas=(0.5, 0.999))
    cyc, loss = affine_pair(), CycleGANLoss(mlp(), mlp(), cycle_weight=1.0, optim=d_optim)
    g = torch.Generator().manual_seed(0)
    # unpaired: X ~ N(0, 1), Y ~ N(3, 1); the maps y = 3 +- x send one to the other
    data = {"x": torch.randn(2048, 1, generator=g), "y": 3 + torch.randn(2048, 1, generator=g)}
    adam = {"lr": 5e-2, "betas": (0.5, 0.999)}
    fit(cyc, data, steps=steps, batch_size=128, loss=loss, optim=pyro.optim.Adam(adam),
        progress=False, checkpoint_dir=directory)  # fmt: skip
    return cyc, loss


def test_fit_moves_the_translation_toward_the_other_domain_and_closes_the_round_trip():
    x = torch.randn(1000, 1, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    before = abs(float(affine_pair().translate(x).mean()) - 3)  # the same initial weights
    cyc, _ = train(200)
    after = abs(float(cyc.translate(x).mean()) - 3)
    assert after < 1.0 and after < before / 3, (before, after)
    assert (cyc.translate_back(cyc.translate(x)) - x).abs().mean() < 0.2


def test_a_resumed_cyclegan_run_matches_a_straight_one(tmp_path):
    def state(cyc: CycleGAN, loss: CycleGANLoss) -> dict[str, torch.Tensor]:
        out = {f"m.{k}": v for k, v in cyc.state_dict().items()}
        for name, term in (("x", loss.x), ("y", loss.y)):
            out.update(
                {f"{name}.{k}": v for k, v in term.state_dict().items() if torch.is_tensor(v)}
            )
            for i, s in term.optimizer.state_dict()["state"].items():
                out.update({f"{name}.opt.{i}.{k}": v for k, v in s.items()})
        return {k: v.detach().clone() for k, v in out.items()}

    straight = state(*train(12))
    train(7, tmp_path)
    resumed = state(*train(12, tmp_path, seed=1))
    assert straight.keys() == resumed.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=0, msg=k)
