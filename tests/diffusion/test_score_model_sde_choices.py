"""A score model given its forward process as a DDPM is given its schedule: an SDE's name, or
the user's own betas (a tensor, a list, a NoiseSchedule), read through the ScheduleSDE. These
failed inside with "'Tensor' object has no attribute 'parameters'" and "'NoiseSchedule' object
has no attribute 'marginal'". Checked: each spelling trains and samples exactly as the SDE
object it names; anything else is one error listing the choices."""

from __future__ import annotations

import pyro
import pytest
import torch
from torch import nn

from pyro_gen.diffusion import VPSDE, NoiseSchedule, ScheduleSDE, ScoreModel

BETAS = torch.linspace(1e-3, 0.2, 30)


class TimeLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([x, t.to(x.dtype)[:, None]], -1))


def _loss_and_draws(sde) -> tuple[float, torch.Tensor]:
    sm = ScoreModel(TimeLinear(), sde, (2,))
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    pyro.set_rng_seed(2)
    loss = pyro.infer.Trace_ELBO().loss(sm.model, sm.guide, x)
    draws = sm.sample(3, "euler_maruyama", steps=5, generator=torch.Generator().manual_seed(3))
    return loss, draws


@pytest.mark.parametrize(
    "given, reference",
    [
        ("vp", VPSDE),
        (BETAS, lambda: ScheduleSDE(NoiseSchedule(BETAS))),
        (BETAS.tolist(), lambda: ScheduleSDE(NoiseSchedule(BETAS))),
        (NoiseSchedule(BETAS), lambda: ScheduleSDE(NoiseSchedule(BETAS))),
    ],
    ids=["name", "tensor", "list", "schedule"],
)
def test_a_name_or_a_ddpm_schedule_is_the_sde_it_names(given, reference):
    loss, draws = _loss_and_draws(given)
    want_loss, want_draws = _loss_and_draws(reference())
    assert loss == want_loss and torch.equal(draws, want_draws)


def test_anything_else_is_one_error_naming_the_choices():
    with pytest.raises(TypeError, match=r"sde must be an SDE .* or a DDPM variance schedule"):
        ScoreModel(TimeLinear(), 0.5, (2,))
    with pytest.raises(ValueError, match="unknown SDE 'linear'"):
        ScoreModel(TimeLinear(), "linear", (2,))
    with pytest.raises(ValueError, match=r"schedule \(the betas given\): every beta_t"):
        ScoreModel(TimeLinear(), torch.tensor([0.5, 1.5]), (2,))
