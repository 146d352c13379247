"""Users' double-precision Pyro programs and the loops that train them, shared by the
test_float64_*.py files: the two ways Pyro users get there (``torch.set_default_dtype(
torch.float64)``, "default", or float32 defaults with float64 data and networks moved with
``.double()``, "double"), a plain-Pyro VAE, one with a global latent over a subsampled plate,
a param-store-only regression, and Pyro's SVI and ``fit`` run from the same seed."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_gen.infer import fit

MODES = ["default", "double"]
X_DIM, Z_DIM, N = 4, 2, 16


@pytest.fixture(autouse=True)
def _restore_default_dtype():
    old = torch.get_default_dtype()
    yield
    torch.set_default_dtype(old)


def _enter(mode: str) -> None:
    """The user's set-up before building anything."""
    if mode == "default":
        torch.set_default_dtype(torch.float64)


def _as_user_builds(module: nn.Module, mode: str) -> nn.Module:
    return module.double() if mode == "double" else module


def _scale(h: torch.Tensor) -> torch.Tensor:
    return nn.functional.softplus(h) + 1e-3


class PlainVAE(nn.Module):
    """A plain-Pyro VAE: ``pyro.module`` networks, a data plate, no pyro_gen part."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(Z_DIM, X_DIM)
        self.encoder = nn.Linear(X_DIM, 2 * Z_DIM)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        h = self.encoder(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(h[..., :Z_DIM], _scale(h[..., Z_DIM:])).to_event(1))


class GlobalVAE(PlainVAE):
    """A global shift ``w`` (param-store guide parameters) over a data plate of N
    subsampled by the indices passed with each minibatch."""

    def model(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        w = pyro.sample("w", dist.Normal(x.new_zeros(X_DIM), 1.0).to_event(1))
        with pyro.plate("data", N, subsample=idx):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z) + w, 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        loc = pyro.param("w_loc", x.new_zeros(X_DIM))
        scale = pyro.param("w_scale", x.new_ones(X_DIM), constraint=dist.constraints.positive)
        pyro.sample("w", dist.Normal(loc, scale).to_event(1))
        h = self.encoder(x)
        with pyro.plate("data", N, subsample=idx):
            pyro.sample("z", dist.Normal(h[..., :Z_DIM], _scale(h[..., Z_DIM:])).to_event(1))


def _data() -> torch.Tensor:
    return torch.randn(N, X_DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _program(kind: str, mode: str):
    """Model, guide and two minibatches, built from seed 0 as the user would."""
    pyro.set_rng_seed(0)
    m = _as_user_builds(GlobalVAE() if kind == "global" else PlainVAE(), mode)
    x = _data()
    if kind == "global":
        idx = torch.arange(N)
        return m.model, m.guide, [(x[:8], idx[:8]), (x[8:], idx[8:])]
    return m.model, m.guide, [(x[:8],), (x[8:],)]


def _store() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _svi(model, guide, batches, epochs: int, per_example: int | None) -> list[float]:
    """Pyro's SVI on the batches in order; each epoch's mean loss per example (a subsampled
    plate's loss estimates all N examples: its share per example is loss / N)."""
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    losses = []
    for _ in range(epochs):
        steps = [svi.step(*b) / (per_example or b[0].shape[0]) for b in batches]
        losses.append(sum(steps) / len(steps))
    return losses


def _fit(model, guide, batches, epochs: int, compile, checkpoint_dir=None) -> list[float]:
    result = fit(
        model,
        batches,
        guide=guide,
        optim=pyro.optim.Adam({"lr": 0.01}),
        epochs=epochs,
        compile=compile,
        progress=False,
        checkpoint_dir=checkpoint_dir,
    )
    return [h["train_loss"] for h in result.history]


def _fit_and_svi(kind: str, mode: str, compile, epochs: int = 3):
    _enter(mode)
    pyro.clear_param_store()
    model, guide, batches = _program(kind, mode)
    pyro.set_rng_seed(1)
    svi_losses = _svi(model, guide, batches, epochs, N if kind == "global" else None)
    expected = _store()
    pyro.clear_param_store()
    model, guide, batches = _program(kind, mode)
    pyro.set_rng_seed(1)
    losses = _fit(model, guide, batches, epochs, compile)
    return losses, svi_losses, _store(), expected


def regression(x: torch.Tensor, y: torch.Tensor) -> None:
    """Param-store parameters only (no module): the store's own restore path."""
    w = pyro.param("w", torch.zeros(()))
    s = pyro.param("s", torch.ones(()), constraint=dist.constraints.positive)
    with pyro.plate("N", x.shape[0]):
        pyro.sample("y", dist.Normal(w * x, s), obs=y)


def _regression_data(dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, generator=g, dtype=torch.float64)
    return x.to(dtype), (3 * x + torch.randn(32, generator=g, dtype=torch.float64)).to(dtype)
