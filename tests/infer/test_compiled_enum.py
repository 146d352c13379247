"""CompiledSVI with TraceEnum_ELBO: enumerated sites summed out in the recorded program give
Pyro's own loss and gradients, for a label enumerated in the guide (the M2 semi-supervised
VAE) and a mixture assignment enumerated in the model; sequential enumeration falls back."""

from __future__ import annotations

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from torch import nn

from pyro_gen.infer.compiled import CompiledSVI, supports
from tests.infer.compiled_models import assert_same_as_svi, assert_same_loss_and_grads

RTOL = 1e-5


# float64 throughout (tests/conftest.py, whose autouse fixture also clears the param store)
pytestmark = pytest.mark.usefixtures("float64_default")


def cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Features side by side, batch dims broadcast (an enumerated label adds one on the left)."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])], -1)


class TinyM2(nn.Module):
    """Kingma et al.'s M2 in miniature: y a latent class, enumerated where it is unobserved."""

    def __init__(self, x_dim: int = 6, classes: int = 3, z_dim: int = 2) -> None:
        super().__init__()
        self.classes, self.z_dim = classes, z_dim
        self.dec = nn.Sequential(nn.Linear(z_dim + classes, 8), nn.Softplus(), nn.Linear(8, x_dim))
        self.enc_y = nn.Sequential(nn.Linear(x_dim, 8), nn.Softplus(), nn.Linear(8, classes))
        self.enc_z = nn.Sequential(nn.Linear(x_dim + classes, 8), nn.Softplus())
        self.loc, self.log_scale = nn.Linear(8, z_dim), nn.Linear(8, z_dim)

    def model(self, x, y=None):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            prior = x.new_ones(x.shape[0], self.classes) / self.classes
            y = pyro.sample("y", dist.OneHotCategorical(prior), obs=y)
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            logits = self.dec(cat(z, y))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, y=None):
        for name in ("enc_y", "enc_z", "loc", "log_scale"):
            pyro.module(name, getattr(self, name))
        with pyro.plate("data", x.shape[0]):
            if y is None:
                q_y = dist.OneHotCategorical(logits=self.enc_y(x))
                y = pyro.sample("y", q_y, infer={"enumerate": "parallel"})
            else:  # the labelled term: alpha log q(y|x), as Kingma et al.'s classifier loss
                log_q = dist.OneHotCategorical(logits=self.enc_y(x)).log_prob(y)
                pyro.factor("classify", 2.0 * log_q, has_rsample=True)
            h = self.enc_z(cat(x, y))
            pyro.sample("z", dist.Normal(self.loc(h), self.log_scale(h).exp()).to_event(1))


class Mixture(nn.Module):
    """A mixture assignment enumerated in the model, a reparameterized global in the guide."""

    def model(self, x):
        locs = pyro.sample("locs", dist.Normal(torch.zeros(2), 3.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            k = pyro.sample("k", dist.Categorical(torch.tensor([0.4, 0.6])))
            pyro.sample("x", dist.Normal(locs[k], 1.0), obs=x)

    def guide(self, x):
        loc = pyro.param("q_loc", torch.tensor([-1.0, 1.0]))
        scale = pyro.param("q_scale", torch.ones(2) * 0.5, constraint=dist.constraints.positive)
        pyro.sample("locs", dist.Normal(loc, scale).to_event(1))


def batches(kind: str):
    torch.manual_seed(0)
    if kind == "mixture":
        m = Mixture()
        return config_enumerate(m.model), m.guide, [(torch.randn(12),)] * 3
    m = TinyM2()
    x = torch.bernoulli(torch.full((10, 6), 0.4))
    y = nn.functional.one_hot(torch.arange(10) % 3, 3).double()
    # an unlabelled batch, a labelled one, then the unlabelled shape again (a replay)
    return m.model, m.guide, [(x,), (x[:4], y[:4]), (x.flip(0),)]


def test_supports_trace_enum():
    assert supports(TraceEnum_ELBO(max_plate_nesting=1))


@pytest.mark.parametrize("kind", ["m2", "mixture"])
def test_same_draws_same_loss_and_grads(kind):
    model, guide, data = batches(kind)
    compiled = CompiledSVI(model, guide, loss=TraceEnum_ELBO(max_plate_nesting=1), backend="fx")
    # each signature: first a plain step, then a recording, then replays
    for step, args in enumerate(data * 2):
        assert_same_loss_and_grads(compiled, TraceEnum_ELBO(max_plate_nesting=1), step, *args)
    assert len(compiled._programs) == len({tuple(a.shape for a in args) for args in data})


def test_training_trajectory_matches_svi():
    def run(compiled: bool):
        pyro.clear_param_store()
        model, guide, data = batches("m2")
        optim = pyro.optim.Adam({"lr": 0.05})
        loss = TraceEnum_ELBO(max_plate_nesting=1)
        svi = (CompiledSVI if compiled else SVI)(model, guide, optim, loss)
        pyro.set_rng_seed(7)
        losses = [float(svi.step(*args)) for args in data * 2]
        assert not compiled or svi.compiled, svi.fallback_reason
        return losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    assert_same_as_svi(run)


def test_sequential_enumeration_falls_back(caplog):
    m = TinyM2()
    x = torch.bernoulli(torch.full((10, 6), 0.4))

    def guide(x):
        pyro.module("enc_y", m.enc_y)
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "y", dist.OneHotCategorical(logits=m.enc_y(x)), infer={"enumerate": "sequential"}
            )
            pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))

    loss = TraceEnum_ELBO(max_plate_nesting=1)
    svi = CompiledSVI(m.model, guide, pyro.optim.Adam({"lr": 0.01}), loss)
    with caplog.at_level(logging.WARNING, logger="pyro_gen"):
        for _ in range(3):
            svi.step(x)
    assert not svi.compiled
    assert "sequentially" in svi.fallback_reason
