"""Flow models inside the user's own plate over the examples, Pyro's minibatch idiom:
``with pyro.plate("data", N, subsample=idx): flow.model(x[idx])`` (or any other name). The
model and the dequantization guide opened their own ``pyro.plate("data")`` and met "Multiple
sample sites named 'data'" (the same name) or put the examples at dim -2 under the user's
plate (another name). The user's plate is now theirs over the examples: the loss is the flat
batch's scaled by ``N / B`` (same draws, same seed), and a plate at dim -1 over other
examples gets one error."""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_gen.flows import MAF, RealNVP

N, B = 40, 8
IDX = torch.arange(5, 5 + B)
_g = torch.Generator().manual_seed(0)
CONTINUOUS = torch.randn(N, 2, generator=_g)
COUNTS = torch.randint(0, 4, (N, 2), generator=_g).float()

# name: (builder, full data)
MODELS: dict[str, tuple[Callable, torch.Tensor]] = {
    "realnvp": (lambda: RealNVP((2,), num_layers=2, hidden_dims=(8,)), CONTINUOUS),
    "maf": (lambda: MAF((2,), num_layers=2, hidden_dims=(8,)), CONTINUOUS),
    "uniform_dequantization": (
        lambda: RealNVP((2,), num_layers=2, hidden_dims=(8,), dequantization="uniform", num_bins=4),
        COUNTS,
    ),
    "variational_dequantization": (  # its guide opens the data plate too
        lambda: RealNVP(
            (2,), num_layers=2, hidden_dims=(8,), dequantization="variational", num_bins=4
        ),
        COUNTS,
    ),
}


def _build(name: str):
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    return MODELS[name][0]()


def _within(part: Callable, plate_name: str) -> Callable:
    def program(x):
        with pyro.plate(plate_name, N, subsample=IDX):
            part(x[IDX])

    return program


def _loss(model, guide, x) -> float:
    pyro.set_rng_seed(0)
    return Trace_ELBO().loss(model, guide, x)


@pytest.mark.parametrize("plate_name", ["data", "batch"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_users_subsampled_plate_scales_the_flat_batchs_loss(name, plate_name):
    m = _build(name)
    x = MODELS[name][1]
    flat = _loss(m.model, m.guide, x[IDX])
    within = _loss(_within(m.model, plate_name), _within(m.guide, plate_name), x)
    assert math.isfinite(flat)
    assert within == pytest.approx(N / B * flat, rel=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pyros_svi_trains_with_the_minibatch_idiom(name):
    m = _build(name)
    x = MODELS[name][1]

    def model(x):
        with pyro.plate("data", N, subsample_size=B) as idx:
            m.model(x[idx])

    def guide(x):
        with pyro.plate("data", N, subsample_size=B) as idx:
            m.guide(x[idx])

    start = {k: v.detach().clone() for k, v in m.state_dict().items()}
    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    assert all(math.isfinite(svi.step(x)) for _ in range(3))
    assert any(not torch.equal(v, m.state_dict()[k]) for k, v in start.items())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_plate_over_other_examples_is_one_error(name):
    m = _build(name)
    x = MODELS[name][1][IDX]
    with pyro.plate("data", N), pytest.raises(ValueError, match="plate 'data' holds 40"):
        m.model(x)
    if name == "variational_dequantization":
        with pyro.plate("data", N), pytest.raises(ValueError, match="plate 'data' holds 40"):
            m.guide(x)


def test_generating_under_the_users_plate_draws_its_examples():
    m = _build("realnvp")
    with pyro.plate("draws", 5):
        assert m.model(num_samples=5).shape == (5, 2)
