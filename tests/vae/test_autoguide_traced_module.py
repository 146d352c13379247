"""AutoAmortizedNormal as a TorchScript module and on models it cannot guide, as Pyro's
test_autoguide_serialization and test_empty_model_error ask of Pyro's autoguides
(tests/infer/test_autoguide.py in pyro-ppl/pyro, read for ideas)."""

from __future__ import annotations

import io
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.vae import AutoAmortizedNormal


def model(x):
    g = pyro.sample("g", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.LogNormal(0.0, 1.0))
        z = pyro.sample("z", dist.Beta(2.0, 2.0))
        pyro.sample("x", dist.Normal(g + y + z, 1.0), obs=x[:, 0])


def test_traced_and_saved_guide_draws_what_the_guide_draws():
    """``torch.jit.trace_module`` of the guide's ``call``, saved and loaded: the same draws
    on the same seed, and the same named parameters with the same values."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    x = torch.randn(3, 2)
    guide = AutoAmortizedNormal(model, hidden_dims=(4,))
    guide(x)
    pyro.set_rng_seed(0)
    expected = guide.call(x)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace_module(guide, {"call": (x,)}, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    pyro.set_rng_seed(0)
    actual = loaded.call(x)
    assert len(actual) == len(expected) == 3  # g, y, z
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)
    params = dict(guide.named_parameters())
    assert {name for name, _ in loaded.named_parameters()} == set(params)
    for name, value in loaded.named_parameters():
        torch.testing.assert_close(value, params[name].detach())


@pytest.mark.parametrize("kind", ["no latent", "only a global latent"])
def test_a_model_without_local_latents_is_refused_naming_the_fix(kind):
    def observed_only(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[:, 0])

    def global_only(x):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(g, 1.0), obs=x[:, 0])

    guide = AutoAmortizedNormal(observed_only if kind == "no latent" else global_only)
    with pytest.raises(ValueError, match="no latent site under a pyro.plate.*AutoNormal"):
        guide(torch.randn(3, 2))
