"""Which plate AutoAmortizedNormal encodes: with ``input_fn``, the plate whose size is the
number of rows it returns (before, any plate qualified, and a plate of global latents around
as many sites as the documents plate won: "Model and guide shapes disagree")."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_gen.vae import AutoAmortizedNormal


def model(data: torch.Tensor) -> None:  # data: (words, documents), as Pyro's LDA example
    with pyro.plate("topics", 3):
        w = pyro.sample("w", dist.Gamma(1.0, 1.0))
    with pyro.plate("documents", data.shape[1]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("words", data.shape[0], dim=-2):
            pyro.sample("x", dist.Normal(z + w.sum(-1), 1.0), obs=data)


def test_input_fn_rows_pick_the_plate_of_their_size():
    pyro.clear_param_store()
    guide = AutoAmortizedNormal(model, hidden_dims=(8,), input_fn=lambda data: data.T)
    assert torch.isfinite(torch.tensor(Trace_ELBO().loss(model, guide, torch.randn(6, 10))))
    assert guide.plate_name == "documents" and list(guide.local_sites) == ["z"]


def test_input_fn_rows_of_no_plates_size_are_refused_naming_the_plates():
    pyro.clear_param_store()
    guide = AutoAmortizedNormal(model, hidden_dims=(8,), input_fn=lambda data: data[:4])
    with pytest.raises(ValueError, match="rows input_fn returns.*'topics' \\(size 3\\)"):
        guide(torch.randn(6, 10))
