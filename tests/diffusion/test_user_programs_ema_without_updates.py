"""A DDPM built with ``ema_decay`` and trained in the user's own Pyro program: ``pyro.infer.SVI``
over their own data iterator, never calling ``update_ema`` (``fit``'s ``ema_callback`` does),
or restored from ``pyro.get_param_store().save/load``, which holds no buffers. The EMA's
averages start as a copy of the initial weights, and ``sample`` (EMA by default), the
score-based likelihoods and the programs asked for the EMA used them: on N(3, 0.5^2) data
the trained network drew a mean of 2.9 and the "averaged" one -618. An EMA of no updates now
leaves the network its own weights; after updates, the averages are used as before."""

from __future__ import annotations

import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from torch import nn

from pyro_gen.diffusion import DDPM, build_ddpm, make_schedule, probability_flow_log_prob

MU, S = 3.0, 0.5


def _batches(seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield MU + S * torch.randn(256, 2, generator=g)


def _ddpm():
    return build_ddpm((2,), timesteps=50, hidden_dim=32, ema_decay=0.99, variance="fixed_small")


def _train(m, steps: int, lr: float = 1e-2) -> None:
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": lr}), TraceMeanField_ELBO())
    data = _batches(0)
    for _ in range(steps):
        svi.step(next(data))


class GaussianEps(nn.Module):
    """A user's denoiser, exact for data N(mu, S^2) with a learnable mean ``mu`` (from 0):
    :math:`E[\\epsilon \\mid x_t] = \\sqrt{1-\\bar\\alpha}(x_t - \\sqrt{\\bar\\alpha}\\mu) /
    (\\bar\\alpha S^2 + 1 - \\bar\\alpha)`."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("ab", alphas_cumprod)
        self.mu = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.ab[t.long() - 1][:, None]
        return (1 - ab).sqrt() * (x - ab.sqrt() * self.mu) / (ab * S**2 + 1 - ab)


def test_a_ddpm_trained_in_the_users_svi_loop_samples_its_data():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    schedule = make_schedule("linear", 50)
    m = DDPM(GaussianEps(schedule.alphas_cumprod), (2,), schedule, ema_decay=0.99)
    _train(m, 100, lr=0.1)
    torch.testing.assert_close(m.net.mu.detach(), torch.full((2,), MU), atol=0.1, rtol=0)
    pyro.set_rng_seed(1)
    draws = m.sample(4000)  # with the EMA, by default
    # the chain's mean is exact under this denoiser (each step's mean maps sqrt(ab_t) mu to
    # sqrt(ab_{t-1}) mu): the learned mu, within 4 standard errors (the draws' spread, below
    # S under fixed_small, over sqrt(4000)); the initial network's is 0
    assert (draws.mean(0) - m.net.mu.detach()).abs().max() < 4 * 0.5 / 4000**0.5
    # the same network read as a score model: its trained weights, whatever use_ema says
    x = MU + S * torch.randn(5, 2)
    ode = {"method": "rk4", "options": {"step_size": 0.05}}
    with_ema = probability_flow_log_prob(m, x, **ode)
    m.ema = None
    torch.testing.assert_close(with_ema, probability_flow_log_prob(m, x, **ode))


def test_a_ddpm_restored_from_the_param_store_samples_with_the_restored_weights(tmp_path):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    trained = _ddpm()
    _train(trained, 5)
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.set_rng_seed(2)
    expected = trained.sample(6, use_ema=False)
    pyro.clear_param_store()
    restored = _ddpm()  # another initialization
    pyro.get_param_store().load(tmp_path / "params.pt")
    pyro.module("ddpm", restored, update_module_params=True)  # the name it registers under
    pyro.set_rng_seed(2)
    torch.testing.assert_close(restored.sample(6), expected)


def test_after_updates_the_average_is_used():
    m = _ddpm()
    m.update_ema()  # the average of the initial weights
    init = {k: v.detach().clone() for k, v in m.net.named_parameters()}
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(1.0)
    with m.ema.average_parameters():
        for k, v in m.net.named_parameters():
            torch.testing.assert_close(v, init[k])
    assert all(not torch.equal(v, init[k]) for k, v in m.net.named_parameters())
    pyro.set_rng_seed(3)
    averaged = m.sample(4)
    pyro.set_rng_seed(3)
    assert not torch.allclose(averaged, m.sample(4, use_ema=False))
