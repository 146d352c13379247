"""A user's exact velocity field, with no parameters, in flow matching: for data N(0, c^2 I)
the rectified-flow path x_s = (1 - s) x + s z has the marginal field
u(x_s) = (s - (1 - s) c^2) / ((1 - s)^2 c^2 + s^2) x_s, linear in x_s. Its draws, its
generative program under Predictive and its density are the data's; they failed with a bare
StopIteration (the base draws took their dtype from the field's first parameter)."""

from __future__ import annotations

import pyro
import torch
from pyro.infer import Predictive
from torch import nn
from torch.distributions import Normal

from pyro_gen.diffusion import FlowMatching
from pyro_gen.transforms.continuous import ContinuousFlow

C = 0.5


class ExactField(nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) if t.dim() else t.to(x.dtype)
        return (s - (1 - s) * C**2) / ((1 - s) ** 2 * C**2 + s**2) * x


def _fm() -> FlowMatching:
    flow = ContinuousFlow(ExactField(), (2,), rtol=1e-7, atol=1e-7)
    return FlowMatching(flow, objective="rectified")


def test_a_parameter_free_exact_field_draws_and_scores_the_data():
    fm = _fm()
    draws = fm.sample(4000, generator=torch.Generator().manual_seed(0))
    assert draws.dtype == torch.get_default_dtype()
    assert abs(float(draws.std()) - C) < 0.02 and abs(float(draws.mean())) < 0.02
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    exact = Normal(0.0, C).log_prob(x).sum(-1)
    assert torch.allclose(fm.log_prob(x), exact, atol=1e-4)
    pyro.set_rng_seed(0)
    program = Predictive(fm.model, num_samples=2)(None, num_samples=3)
    # the program's draw is the ODE's image of its base site: the flow's own transport
    z = program["z"].reshape(-1, 2)
    assert torch.allclose(program["x"].reshape(-1, 2), fm.transport(z), atol=1e-6)
    assert torch.allclose(fm.transport(z), C * z, atol=1e-4)  # the linear map N(0,1) -> N(0,C^2)
