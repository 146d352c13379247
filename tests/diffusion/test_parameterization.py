"""Parameterization conversions round-trip and agree with their definitions."""

from __future__ import annotations

import itertools

import pytest
import torch

from pyro_gen.diffusion import PARAMETERIZATIONS, convert


@pytest.mark.parametrize("source,target", list(itertools.permutations(PARAMETERIZATIONS, 2)))
def test_round_trip(source, target):
    torch.manual_seed(0)
    x_t, pred = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    ab = torch.rand(4, 1, dtype=torch.float64) * 0.98 + 0.01
    back = convert(convert(pred, source, target, x_t, ab), target, source, x_t, ab)
    assert torch.allclose(back, pred, atol=1e-10)


def test_definitions():
    torch.manual_seed(1)
    x0, eps = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    ab = torch.tensor(0.37, dtype=torch.float64)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x_t = a * x0 + s * eps
    truth = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s}
    for source, target in itertools.product(PARAMETERIZATIONS, repeat=2):
        out = convert(truth[source], source, target, x_t, ab)
        assert torch.allclose(out, truth[target], atol=1e-10), (source, target)
    with pytest.raises(ValueError, match="unknown parameterization"):
        convert(eps, "eps", "noise", x_t, ab)
