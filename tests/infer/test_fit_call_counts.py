"""How often ``fit`` runs a user's model and guide, as its docstring states: with
``compile=False`` once per step and particle as Pyro's ``SVI.step`` (after one checking
trace); the compiled step calls them only while recording, then replays its program."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_gen.infer import fit


def _counted():
    calls = {"model": 0, "guide": 0}

    def model(x):
        calls["model"] += 1
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        calls["guide"] += 1

    return model, guide, calls


@pytest.mark.parametrize("particles", [1, 3])
def test_plain_step_runs_model_and_guide_once_per_step_and_particle(particles):
    pyro.clear_param_store()
    model, guide, calls = _counted()
    loss = Trace_ELBO(num_particles=particles)
    fit(model, torch.randn(100), guide=guide, loss=loss, steps=10, batch_size=10,
        compile=False, progress=False)  # fmt: skip
    assert calls == {"model": 1 + 10 * particles, "guide": 1 + 10 * particles}


def test_compiled_step_stops_calling_them_once_recorded():
    pyro.clear_param_store()
    model, guide, calls = _counted()
    fit(model, torch.randn(100), guide=guide, steps=10, batch_size=10, progress=False)
    recorded = dict(calls)
    fit(model, torch.randn(100), guide=guide, steps=30, batch_size=10, progress=False)
    # a second fit records again (a new step object) but 20 more steps add no calls
    assert calls["model"] - recorded["model"] == recorded["model"]
    assert recorded["model"] < 10
