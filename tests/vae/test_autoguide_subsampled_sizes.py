"""AutoAmortizedNormal on a model that subsamples the data it is given: the guide draws the
indices the model replays, so it must open the plate with the sizes the model opens it with
on each call's data, not the first call's (a held-out set of another size, another
``batch_size=``). Before, the guide drew indices up to the training set's size (IndexError
in the model) or scored a random minibatch of a held-out set it was asked to score whole."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from pyro_gen.infer import evaluate_elbo
from pyro_gen.vae import AutoAmortizedNormal


def model(x: torch.Tensor, batch_size: int | None = None) -> None:
    loc = pyro.param("loc", torch.zeros(2))
    with pyro.plate("data", x.shape[0], subsample_size=batch_size) as idx:
        z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x[idx])


def _plate_of(guide, *args, **kwargs):
    frame = next(
        f
        for f in poutine.trace(guide).get_trace(*args, **kwargs).nodes["z"]["cond_indep_stack"]
        if f.name == "data"
    )
    return frame.full_size, frame.size


def test_the_plate_follows_each_calls_data_and_batch_size():
    pyro.clear_param_store()
    guide = AutoAmortizedNormal(model, hidden_dims=(8,))
    train, held = torch.randn(64, 2), torch.randn(32, 2)
    assert _plate_of(guide, train, batch_size=16) == (64, 16)
    assert _plate_of(guide, held, batch_size=16) == (32, 16)  # another size of data
    assert _plate_of(guide, held) == (32, 32)  # every example: no subsampling
    assert _plate_of(guide, train, batch_size=16) == (64, 16)  # and back


def test_reading_the_models_sizes_leaves_the_random_state_alone():
    pyro.clear_param_store()
    guide = AutoAmortizedNormal(model, hidden_dims=(8,))
    guide(torch.randn(64, 2), batch_size=16)
    held = torch.randn(32, 2)
    before = torch.get_rng_state()
    assert guide._plate_sizes(32, (held,), {"batch_size": 8}) == (32, 8)  # the model ran
    assert torch.equal(before, torch.get_rng_state())


def test_a_held_out_set_of_another_size_is_scored_whole():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoAmortizedNormal(model, hidden_dims=(8,))
    guide(torch.randn(64, 2), batch_size=16)
    held = torch.randn(40, 2)
    per_example = evaluate_elbo(model, [(held,)], guide=guide, per_example=True)
    assert per_example.shape == (40,) and torch.isfinite(per_example).all()
