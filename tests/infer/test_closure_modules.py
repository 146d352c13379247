"""Modules a plain Pyro program closes over and registers with ``pyro.module``: fit keeps
their buffers in checkpoints (an exact resume) and counts their running statistics once a
step, and evaluation switches them to evaluation mode, as it does a module's own."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_gen.data.batching import batch_calls
from pyro_gen.infer import evaluate_elbo, fit
from pyro_gen.infer.program import program, trace_once
from pyro_gen.transforms import inverse_autoregressive


def vae_functions():
    """A plain-Pyro VAE over closures: an encoder with batch norm and an IAF on the guide."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 4))
    decoder = nn.Linear(2, 6)
    iaf = inverse_autoregressive(2, hidden_dims=[8])

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        pyro.module("iaf", iaf)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = encoder(x).chunk(2, -1)
            base = dist.Normal(loc, log_scale.exp()).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, [iaf]))

    return model, guide, encoder


DATA = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))


def train(epochs: int, directory) -> nn.Module:
    pyro.clear_param_store()
    model, guide, encoder = vae_functions()  # new objects, as in a new process
    pyro.set_rng_seed(0)
    fit(model, DATA, guide=guide, epochs=epochs, batch_size=16, checkpoint_dir=directory,
        progress=False)  # fmt: skip
    return encoder


def test_found_by_their_registered_names() -> None:
    pyro.clear_param_store()
    model, guide, encoder = vae_functions()
    prog = program(model, guide)
    trace_once(prog, batch_calls(DATA, 16, shuffle=False).peek())
    assert prog.modules["pyro.module:encoder"] is encoder
    # the IAF's network is called inside the registered transform; the decoder has no buffer
    # but a mode, and is kept too
    assert set(prog.modules) == {
        "pyro.module:encoder",
        "pyro.module:iaf.made",
        "pyro.module:decoder",
    }


def test_resume_keeps_running_statistics(tmp_path) -> None:
    straight = train(2, tmp_path / "straight")
    train(1, tmp_path / "resumed")
    resumed = train(2, tmp_path / "resumed")
    norm, again = straight[1], resumed[1]
    assert int(norm.num_batches_tracked) == int(again.num_batches_tracked) == 8  # one a step
    torch.testing.assert_close(again.running_mean, norm.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(again.running_var, norm.running_var, rtol=0, atol=0)


def test_evaluation_in_eval_mode_leaves_statistics() -> None:
    pyro.clear_param_store()
    model, guide, encoder = vae_functions()
    fit(model, DATA, guide=guide, epochs=1, batch_size=16, progress=False)
    stats = [b.clone() for b in encoder[1].buffers()]
    pyro.set_rng_seed(2)
    found = evaluate_elbo(model, DATA[:8], guide=guide, num_particles=4, progress=False)
    assert encoder.training  # the mode is given back
    assert all(torch.equal(a, b) for a, b in zip(stats, encoder[1].buffers()))
    encoder.eval()  # what the user would otherwise have to remember
    pyro.set_rng_seed(2)
    expected = evaluate_elbo(model, DATA[:8], guide=guide, num_particles=4, progress=False)
    assert abs(found - expected) < 1e-6
