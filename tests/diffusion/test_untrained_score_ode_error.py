"""The probability-flow ODE of an untrained variance-exploding score model: its drift
:math:`-\\tfrac12 g(t)^2 s_\\theta` grows like :math:`\\sigma_{max}^2` times the network's
output, so the adaptive solver's step size shrinks to nothing, and the likelihood and the ODE
sampler stopped with torchdiffeq's bare ``AssertionError: underflow in dt 0.0``, which named
neither the model nor a way on. Both now raise one error saying where the solve stopped and
what to do (train longer, loosen the tolerances, or a fixed-step solver), with the solver's
own error as its cause; the fixed-step solver it names then finishes."""

from __future__ import annotations

import pytest
import torch

from pyro_gen.diffusion import VESDE, ScoreModel, probability_flow_log_prob, sample
from tests.diffusion.user_network import Net

ADVICE = r"solver.*stopped.*t=.*step size shrank to zero.*Train the model longer.*method='rk4'"


def _untrained(seed: int = 0):
    torch.manual_seed(seed)
    return ScoreModel(Net(), VESDE(0.01, 50.0), (2,), param="score")


def test_the_likelihood_of_an_untrained_ve_score_model_says_what_to_do():
    sm, x = _untrained(), torch.randn(8, 2)
    with pytest.raises(RuntimeError, match=ADVICE) as info:
        probability_flow_log_prob(sm, x)
    assert isinstance(info.value.__cause__, AssertionError)
    assert str(info.value.__cause__).startswith("underflow in dt")
    # the way on that it names: a fixed-step solve finishes, one value per example
    lp = probability_flow_log_prob(sm, x, method="rk4", options={"step_size": 0.01})
    assert lp.shape == (8,)


def test_the_ode_sampler_of_an_untrained_ve_score_model_says_what_to_do():
    with pytest.raises(RuntimeError, match=ADVICE):
        sample(_untrained(seed=1), 8, "ode")  # its solve backwards blows up with this seed
