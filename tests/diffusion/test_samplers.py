"""Samplers: DDIM with eta=1 over all steps is the ancestral sampler; DDIM steps validated."""

from __future__ import annotations

import pytest
import torch

from pyro_gen.diffusion import (
    DDPM,
    NoiseSchedule,
    ancestral_sample,
    ddim_sample,
    ddim_timesteps,
    linear_betas,
)
from pyro_gen.nn.time_embedding import TimeMLP

torch.set_num_threads(1)


@pytest.fixture
def ddpm():
    torch.manual_seed(0)
    net = TimeMLP(2, 16, num_layers=1)
    return DDPM(net, (2,), NoiseSchedule(linear_betas(10, 0.02, 0.4)))


def test_ddim_eta1_is_ancestral_same_noise(ddpm):
    a = ancestral_sample(ddpm, 64, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(ddpm, 64, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, b, atol=1e-4)


def test_ddim_eta1_matches_ancestral_in_distribution(ddpm):
    a = ddpm.sample(20_000, "ancestral")
    b = ddpm.sample(20_000, "ddim", eta=1.0)
    se = (a.var(0) / 20_000 * 2).sqrt()
    assert bool(((a.mean(0) - b.mean(0)).abs() < 4 * se).all())
    assert torch.allclose(a.std(0), b.std(0), rtol=0.05)
    # deterministic DDIM is a different sampler: no noise after x_T
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(ddim_sample(ddpm, 3, steps=4, generator=g1),
                       ddim_sample(ddpm, 3, steps=4, generator=g2))  # fmt: skip


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 50)[-1] == 1000 and ddim_timesteps(1000, 50)[0] == 1
    assert torch.equal(ddim_timesteps(7, 7), torch.arange(1, 8))
    with pytest.raises(ValueError, match=r"\[1, T=10\]"):
        ddim_timesteps(10, 11)
    with pytest.raises(ValueError, match="ancestral"):
        DDPM(TimeMLP(2, 8), (2,), "linear", timesteps=10).sample(2, steps=5)
