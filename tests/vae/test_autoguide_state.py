"""AutoAmortizedNormal across checkpoints and recorders: a guide called once loads a
state_dict and then behaves exactly as the saved one; the first recorded call already
lists its parameters in their steady order (the compiled step compares two runs), and the
compiled step trains a model with a positive global latent."""

from __future__ import annotations

import io
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import init_to_median, init_to_sample

from pyro_gen.vae import AutoAmortizedNormal


def model(x):
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))  # positive global latents
    rate = pyro.sample("rate", dist.Gamma(2.0, 2.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, rate).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), scale).to_event(1), obs=x)


def trained_guide(x, steps=5, init_loc_fn=None):
    guide = AutoAmortizedNormal(model, hidden_dims=(8,), init_loc_fn=init_loc_fn)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(steps):
        svi.step(x)
    return guide


@pytest.mark.parametrize("init_loc_fn", [None, init_to_sample], ids=["default", "sample"])
def test_state_dict_loads_into_a_guide_called_once(init_loc_fn):
    """(With init_to_sample the fresh guide starts from other draws: the loaded state
    replaces them.)"""
    x = torch.randn(6, 1)
    saved = trained_guide(x, init_loc_fn=init_loc_fn)
    buffer = io.BytesIO()
    torch.save(saved.state_dict(), buffer)
    pyro.clear_param_store()
    fresh = AutoAmortizedNormal(model, hidden_dims=(8,), init_loc_fn=init_loc_fn)
    poutine.trace(fresh).get_trace(x)  # the warm-up call fit makes before restoring
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(saved.median(x).values(), fresh.median(x).values()):
        assert torch.equal(a, b)
    pyro.set_rng_seed(3)
    draw_a = saved(x)
    pyro.set_rng_seed(3)
    draw_b = fresh(x)
    assert all(torch.equal(draw_a[k], draw_b[k]) for k in ("scale", "rate", "z"))
    # and training resumes identically: the parameters the optimizer sees are the loaded ones
    store = {n: p for n, p in pyro.get_param_store().named_parameters()}
    loaded = {id(p) for p in fresh.parameters()}
    assert {id(p) for p in store.values()} <= loaded and len(store) == len(loaded)


@pytest.mark.parametrize("loaded_before_first_call", [True, False])
def test_a_param_store_loaded_the_pyro_way_restores_the_guide(tmp_path, loaded_before_first_call):
    """``pyro.get_param_store().save`` / ``.load`` then a new guide object, as Pyro's
    tutorials restore an autoguide: the guide encodes with the loaded weights, and training
    updates the tensors it encodes with (it kept fresh weights while SVI trained the loaded
    ones, which nothing read)."""
    x = torch.randn(6, 1)
    pyro.clear_param_store()
    saved = trained_guide(x)
    expected = saved.median(x)
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    fresh = AutoAmortizedNormal(model, hidden_dims=(8,))
    if loaded_before_first_call:
        pyro.get_param_store().load(tmp_path / "params.pt")
    else:  # the guide already ran once with its own weights
        fresh.setup(x)
        pyro.get_param_store().load(tmp_path / "params.pt")
        poutine.trace(fresh).get_trace(x)
    for name, value in fresh.median(x).items():
        assert torch.allclose(value, expected[name]), name
    before = fresh.encode(x)["z"].clone()
    SVI(model, fresh, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO()).step(x)
    assert not torch.allclose(fresh.encode(x)["z"], before)


def test_setup_builds_everything_without_recording():
    x = torch.randn(4, 1)
    guide = AutoAmortizedNormal(model, hidden_dims=(8,))
    with poutine.trace() as tracer:
        guide.setup(x)
    assert not tracer.trace.nodes and guide.global_guide is not None
    names = set(guide.state_dict())
    assert {"net.0.weight", "global_guide.locs.scale_unconstrained"} <= names
    assert "global_guide.scales.rate_unconstrained" in names


def test_first_call_records_parameters_in_steady_order():
    x = torch.randn(4, 1)
    guide = AutoAmortizedNormal(model, hidden_dims=(8,))

    def order():
        tr = poutine.trace(guide).get_trace(x)
        return [(n, s["type"]) for n, s in tr.nodes.items()]

    first, second = order(), order()
    assert first == second
    assert ("AutoAmortizedNormal.global_guide.locs.scale", "param") in first


def test_pickle_round_trip_after_use():
    x = torch.randn(4, 1)
    guide = trained_guide(x, steps=2)
    copy = pickle.loads(pickle.dumps(guide))
    pyro.set_rng_seed(0)
    a = guide(x)
    pyro.set_rng_seed(0)
    b = copy(x)  # works without its model, which Pyro's autoguides drop when pickled
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("init_loc_fn", [None, init_to_median], ids=["default", "median"])
def test_compiled_step_with_positive_global_latents(caplog, init_loc_fn):
    from pyro_gen.infer.compiled import CompiledSVI

    x = torch.randn(16, 1)
    guide = AutoAmortizedNormal(model, hidden_dims=(8,), init_loc_fn=init_loc_fn)
    svi = CompiledSVI(model, guide, pyro.optim.Adam({"lr": 1e-2}))
    with caplog.at_level("INFO", logger="pyro_gen"):
        losses = [float(svi.step(x)) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert "plain Pyro SVI" not in caplog.text, caplog.text  # it stayed compiled


def test_a_missing_input_gives_a_clear_error():
    x = torch.randn(4, 3)

    def two_inputs(x, w=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    guide = AutoAmortizedNormal(two_inputs, hidden_dims=(4,))
    guide(x, w=torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"\['x', 'w'\].*\['w'\].*input_fn"):
        guide(x)


def test_inputs_of_another_width_give_a_clear_error():
    def sequences(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1), 1.0).to_event(1), obs=x)

    guide = AutoAmortizedNormal(sequences, hidden_dims=(4,))
    guide(torch.randn(3, 5))
    with pytest.raises(ValueError, match="built for 5 input features.*got 7.*padding"):
        guide(torch.randn(3, 7))
