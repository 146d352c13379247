"""A CPU generator drives the sampled bound of a CUDA DDPM, with the CPU's draws: a seeded
evaluation gives the same numbers on either device (``torch.rand(..., generator=cpu_gen,
device='cuda')`` is an error, so the step draws are made where the generator lives)."""

from __future__ import annotations

import torch

from pyro_gen.diffusion import build_ddpm
from pyro_gen.diffusion.likelihood import sampled_variational_bound
from tests.cuda.tier import DEVICE, MARKS

pytestmark = MARKS


def test_sampled_bound_with_a_cpu_generator_matches_the_cpu():
    torch.manual_seed(2)
    m = build_ddpm((3,), timesteps=40, hidden_dim=16, variance="fixed_small")
    x = torch.randn(8, 3)
    cpu = sampled_variational_bound(m, x, strata=5, generator=torch.Generator().manual_seed(0))
    m.to(DEVICE)
    dev = sampled_variational_bound(
        m, x.to(DEVICE), strata=5, generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(dev["total"].cpu(), cpu["total"], rtol=1e-4, atol=1e-4)
