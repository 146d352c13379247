"""Zero draws (``num_samples=0``, which ``sample_count`` accepts: a class that gets no samples,
an empty evaluation split): the ancestral, DDIM, Langevin and Euler-Maruyama samplers return
the empty batch, while the predictor-corrector failed in its corrector ("cannot reshape tensor
of 0 elements"), the probability-flow ODE and flow matching's sample in the adaptive solver
("underflow in dt 0.0"), and flow matching's log_prob of no examples in torch's
``Independent.log_prob``. Each now returns the empty batch in the model's dtype, and a draw
after it is the draw a fresh generator gives (nothing was consumed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_gen.diffusion import DDPM, SAMPLERS, VPSDE, FlowMatching, ScoreModel, sample
from pyro_gen.transforms.continuous import ContinuousFlow


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2, dtype=torch.float64)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([x, t.to(x.dtype).expand(x.shape[:1])[:, None] / 10], -1))


def untouched() -> torch.Tensor:
    """The first draw of a fresh generator of the same seed."""
    return torch.randn(3, generator=torch.Generator().manual_seed(0))


MODELS = {
    "score": lambda: ScoreModel(Net(), VPSDE(), (2,)),
    "ddpm": lambda: DDPM(Net(), (2,), "linear", timesteps=5, variance="fixed_small"),
}


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_score_sampler_draws_nothing(name, sampler):
    m, g = MODELS[name](), torch.Generator().manual_seed(0)
    options = {} if sampler == "ode" else {"steps": 2}
    empty = sample(m, 0, sampler, generator=g, **options)
    assert empty.shape == (0, 2) and empty.dtype == torch.float64
    assert torch.equal(torch.randn(3, generator=g), untouched())


def test_flow_matching_draws_and_scores_nothing():
    fm, g = FlowMatching(ContinuousFlow(Net(), (2,))), torch.Generator().manual_seed(0)
    empty = fm.sample(0, generator=g)
    assert empty.shape == (0, 2) and empty.dtype == torch.float64
    assert torch.equal(torch.randn(3, generator=g), untouched())
    lp = fm.log_prob(torch.zeros(0, 2, dtype=torch.float64))
    assert lp.shape == (0,) and lp.dtype == torch.float64
