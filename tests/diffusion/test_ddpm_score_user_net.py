"""A DDPM read as a score model (DDPMScore) with a user's network made for whole steps.

The DDPM's docs give its network ``t`` as a long tensor of steps, and a user's network may
look them up in an ``nn.Embedding``; the score-based samplers and the probability-flow
likelihood read the DDPM at fractional steps ``t*T``. Checked: such a network gets one error
naming the cause and the way out (it got torch's "Expected tensor for argument #1 'indices'"),
while a network that fails for another reason keeps its own error, and a network taking float
steps gives DDPMScore the score of its prediction (against the conversion by hand).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_gen.diffusion import DDPM, DDPMScore, probability_flow_log_prob, sample

T = 20


class StepEmbeddingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(T + 1, 8)
        self.f = nn.Linear(10, 2)

    def forward(self, x, t):
        return self.f(torch.cat([x, self.emb(t)], -1))


def test_a_network_for_whole_steps_is_named_by_the_score_samplers_and_likelihood():
    m = DDPM(StepEmbeddingNet(), (2,), timesteps=T)
    assert m.sample(3).shape == (3, 2)  # its own samplers use whole steps
    for read in (
        lambda: sample(m, 3, "pc", steps=4),
        lambda: probability_flow_log_prob(m, torch.randn(3, 2)),
    ):
        with pytest.raises(TypeError, match=r"takes only whole\s+steps.*SinusoidalTimeEmbedding"):
            read()


class Broken(nn.Module):
    def forward(self, x, t):
        return x @ torch.ones(3, 2)  # wrong shape whatever the time


def test_another_failure_of_the_network_keeps_its_own_error():
    m = DDPM(Broken(), (2,), timesteps=T)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        DDPMScore(m).score(torch.randn(3, 2), torch.full((3,), 0.5))


class FloatSteps(nn.Module):
    def forward(self, x, t):
        return x * t[:, None] / T


def test_float_steps_reach_the_network_and_become_a_score():
    m = DDPM(FloatSteps(), (2,), timesteps=T).double()
    s = DDPMScore(m)
    x, t = torch.randn(3, 2, dtype=torch.float64), torch.tensor([0.3, 0.55, 0.9]).double()
    sigma = s.sde.marginal(t)[1][:, None]
    torch.testing.assert_close(s.score(x, t), -(x * t[:, None]) / sigma)
