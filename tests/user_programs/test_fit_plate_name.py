"""``fit(..., plate_name=)`` names the plate over the examples, which its batch checks (the
first dimension cut into batches, global latents beside a plate of the batch's size) and the
held-out ELBO read. A name the model has no plate of was ignored without ``eval_data``, and
with it those checks were silently skipped: a typo turned off the warning below."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.infer import fit
from pyro_gen.infer.batch_checks import UnscaledBatchWarning

X = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))


def model(x: torch.Tensor) -> None:
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def guide(x: torch.Tensor) -> None:
    mean = pyro.param("mean", torch.zeros(2))
    pyro.sample("loc", dist.Normal(mean, 0.3).to_event(1))


def test_a_plate_name_the_model_lacks_is_refused_before_training():
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"plate_name='dat' is not a vectorized plate.*'data'"):
        fit(model, X, guide=guide, steps=1, batch_size=4, plate_name="dat", progress=False)
    assert "mean" not in pyro.get_param_store()  # refused before any step


def test_the_right_plate_name_keeps_the_batch_checks():
    pyro.clear_param_store()
    with pytest.warns(UnscaledBatchWarning, match="'data'"):
        fit(model, X, guide=guide, steps=1, batch_size=4, plate_name="data", progress=False)
