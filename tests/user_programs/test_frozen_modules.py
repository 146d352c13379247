"""A network the user put in evaluation mode before training, as when fine-tuning around a
pretrained decoder whose batch-norm statistics and dropout are to stay as they are
(``decoder.eval()``, or one frozen part of a larger module). Pyro's SVI leaves module modes
to the user; ``fit`` called ``.train()`` on every module at each epoch, so the frozen
statistics moved and dropout came on, and the steps were not Pyro's."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_gen.infer import fit

X = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))


def _networks(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    decoder = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 4))
    encoder = nn.Linear(4, 4)
    return decoder, encoder


def _pair(decoder: nn.Module, encoder: nn.Module):
    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            h = encoder(x)
            pyro.sample("z", dist.Normal(h[:, :2], h[:, 2:].exp()).to_event(1))

    return model, guide


def _freeze(decoder: nn.Module, part: str) -> None:
    if part == "whole":
        decoder.eval()
    else:  # only the batch norm, inside a module left in training mode
        decoder[1].eval()


@pytest.mark.parametrize("part", ["whole", "batch_norm"])
@pytest.mark.parametrize("compile", [False, None])
def test_frozen_modes_are_kept_and_the_steps_are_pyros(part, compile):
    batches = [X[:8], X[8:]]
    decoder, encoder = _networks()
    _freeze(decoder, part)
    stats = [b.clone() for b in decoder[1].buffers()]
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    model, guide = _pair(decoder, encoder)
    fit(
        model,
        batches,
        guide=guide,
        epochs=2,
        optim=pyro.optim.Adam({"lr": 0.05}),
        compile=compile,
        progress=False,
    )
    assert not decoder[1].training and decoder.training == (part != "whole")
    assert all(torch.equal(a, b) for a, b in zip(stats, decoder[1].buffers()))

    reference, ref_encoder = _networks()
    _freeze(reference, part)
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    ref_model, ref_guide = _pair(reference, ref_encoder)
    svi = SVI(ref_model, ref_guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(2):
        for batch in batches:
            svi.step(batch)
    for ours, theirs in zip(decoder.parameters(), reference.parameters()):
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_a_module_in_training_mode_still_trains_in_it():
    """Modes are given back after each held-out evaluation (which runs in eval mode)."""
    decoder, encoder = _networks()
    pyro.clear_param_store()
    model, guide = _pair(decoder, encoder)
    fit(model, X, guide=guide, epochs=2, batch_size=8, eval_data=X, progress=False)
    assert decoder.training and decoder[1].training
    assert int(decoder[1].num_batches_tracked) == 4  # two steps an epoch, none evaluating
