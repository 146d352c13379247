"""The adaptive solver's bare ``AssertionError: underflow in dt`` (its step size shrunk to
nothing where the solution blows up or the field is not finite) becomes one error naming where
the solve stopped and what to do; other errors of the field pass unchanged."""

from __future__ import annotations

import re

import pytest
import torch

from pyro_gen.transforms.continuous import odeint_with_logdet, solve_ode


def _stop_time(err: BaseException) -> float:
    return float(re.search(r"t=([-0-9.e]+), solving", str(err)).group(1))


def test_a_blow_up_is_reported_where_it_happens():
    # dy/dt = y**2 from y(0) = 1: y = 1 / (1 - t), infinite at t = 1
    with pytest.raises(RuntimeError, match="stopped near t=.*shrank to zero.*method='rk4'") as info:
        solve_ode(lambda t, y: y**2, torch.ones(3), torch.tensor([0.0, 2.0]))
    assert 0.99 < _stop_time(info.value) <= 1.0
    assert str(info.value.__cause__).startswith("underflow in dt")


def test_a_field_that_turns_non_finite_is_named_so():
    def field(z, t):  # finite before t = 0.5, NaN after
        return -z + torch.where(t > 0.5, torch.nan, 0.0)

    with pytest.raises(RuntimeError, match="stopped: the field is not finite at t=") as info:
        odeint_with_logdet(field, torch.ones(2, 3), 0.0, 1.0)
    assert 0.5 < _stop_time(info.value) <= 1.0


def test_other_errors_of_the_field_pass_unchanged():
    def field(t, y):
        raise AssertionError("the user's own check")

    with pytest.raises(AssertionError, match="the user's own check"):
        solve_ode(field, torch.ones(2), torch.tensor([0.0, 1.0]))
