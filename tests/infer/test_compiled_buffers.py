"""Module buffers on the compiled step: a batch norm's running statistics see each
training step once, as under Pyro's SVI; the structural checks, probes, recording and
compilation that the compiled step runs besides its steps leave them untouched."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_gen.infer.compiled import CompiledSVI
from pyro_gen.infer.undo_writes import UndoWrites


class BatchNormVAE(nn.Module):
    """A plain-Pyro VAE whose encoder normalises with batch statistics (Pyro's ProdLDA
    tutorial does this in its encoder and decoder)."""

    def __init__(self, momentum: float | None) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(6, 8), nn.BatchNorm1d(8, momentum=momentum), nn.Tanh(), nn.Linear(8, 4)
        )
        self.decoder = nn.Linear(2, 6)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def train(compiled: str | None, momentum: float | None, steps: int = 8) -> BatchNormVAE:
    """The VAE after ``steps`` steps of Pyro's SVI (``compiled=None``) or of CompiledSVI with
    that backend. A cumulative average (``momentum=None``) divides by the step count that
    batch norm reads from its buffer each step: the recording sees the read and the step
    runs as plain Pyro SVI, which must then keep the same statistics."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = BatchNormVAE(momentum)
    x = torch.randn(16, 6, dtype=torch.float64)
    vae.double()
    optim = pyro.optim.Adam({"lr": 0.01})
    if compiled is None:
        svi = SVI(vae.model, vae.guide, optim, Trace_ELBO())
    else:
        svi = CompiledSVI(vae.model, vae.guide, optim, backend=compiled, check_every=3)
    pyro.set_rng_seed(1)
    for _ in range(steps):
        svi.step(x)
    if compiled is not None and momentum is not None:
        assert svi.compiled, svi.fallback_reason
    elif compiled is not None:
        assert not svi.compiled and "control flow" in svi.fallback_reason
    return vae


@pytest.mark.parametrize("backend", ["fx", "auto"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["ema", "cumulative"])
def test_running_statistics_follow_svi(backend: str, momentum: float | None) -> None:
    plain = dict(train(None, momentum).encoder[1].named_buffers())
    compiled = dict(train(backend, momentum).encoder[1].named_buffers())
    assert int(compiled["num_batches_tracked"]) == int(plain["num_batches_tracked"]) == 8
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(compiled[name], plain[name], rtol=1e-6, atol=1e-9)


def test_undo_writes_puts_back_views_and_leaves_new_tensors() -> None:
    buffer = torch.zeros(4)
    with UndoWrites():
        buffer[1:3].add_(5.0)  # a write through a view
        buffer.mul_(2.0)
        made = torch.ones(2).add_(1.0)  # a tensor made inside keeps its writes
    assert buffer.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert made.tolist() == [2.0, 2.0]


def test_undo_writes_keeps_a_data_dependent_initialization() -> None:
    from pyro_gen.transforms import ActNorm

    act = ActNorm(3)
    x = torch.randn(32, 3) * 4.0 + 2.0
    with torch.no_grad(), UndoWrites():
        act(x)
    assert act.initialized  # the parameters the first call set are kept
    assert torch.allclose(act(x).mean(0), torch.zeros(3), atol=1e-5)


def test_lifting_a_captured_constant_that_comes_first_keeps_the_graph_whole() -> None:
    # The first op reads a captured constant, which becomes an input; new inputs were once
    # inserted before that erased node, corrupting the node list.
    from torch.fx.experimental.proxy_tensor import make_fx

    from pyro_gen.infer.compiled_recording import _lift_inputs, _Noise

    constant = torch.tensor([1.0, 2.0])
    gm = make_fx(lambda x: (x + constant) * torch.randn(2))(torch.ones(2))
    extras = _lift_inputs(gm)
    gm.recompile()
    nodes = list(gm.graph.nodes)
    assert [n.name for n in reversed(gm.graph.nodes)] == [n.name for n in reversed(nodes)]
    assert [n.op for n in nodes[:3]] == ["placeholder"] * 3
    assert extras[0] is constant and isinstance(extras[1], _Noise)
    noise = torch.full((2,), 0.5)
    assert gm(torch.ones(2), constant, noise).tolist() == [1.0, 1.5]
