"""The programs of Pyro's "Customizing SVI objectives" tutorial and the Pyro idioms around
it, shared by the test_custom_objectives_*.py files: the tutorial's callable losses
(``simple_elbo`` from ``poutine.trace``/``replay``, ``Trace_ELBO().differentiable_loss`` plus
an L2 penalty), a small VAE with a ``pyro.param`` in the model and three kinds of guide, a
Normal-Normal model whose guide is the exact posterior (every bound is log p(x) in closed
form), a model with a global and a subsampled data plate with ``pyro.contrib.easyguide``
guides, and the run of Pyro's SVI then ``fit`` from the same seed on the same batches."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.contrib.easyguide import EasyGuide, easy_guide
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_gen.infer import fit
from pyro_gen.transforms import inverse_autoregressive
from pyro_gen.vae import AutoAmortizedNormal

X_DIM, Z_DIM, N, B = 3, 2, 12, 4


def simple_elbo(model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
    """The tutorial's ELBO: one draw from the guide, replayed in the model."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return -(model_trace.log_prob_sum() - guide_trace.log_prob_sum())


L2 = 0.05


def l2_regularized(model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
    """The tutorial's "adding terms": Pyro's differentiable ELBO plus an L2 penalty on every
    parameter in the store (``pyro.param`` sites and ``pyro.module`` weights)."""
    loss = Trace_ELBO().differentiable_loss(model, guide, *args, **kwargs)
    penalty = sum(p.pow(2).sum() for _, p in pyro.get_param_store().named_parameters())
    return loss + L2 * penalty


LOSSES = {"simple_elbo": simple_elbo, "l2_regularized": l2_regularized}


# ---------------------------------------------------------------------------------------
# A small VAE with a pyro.param in the model, and three kinds of guide.


class VAE(nn.Module):
    """z ~ N(0, I), x | z ~ N(decoder(z), s) with a learned ``pyro.param`` scale s; the
    model takes the tutorial's ``annealing_factor`` for its latent site."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(Z_DIM, X_DIM)
        self.encoder = nn.Linear(X_DIM, 2 * Z_DIM)
        self.flow = inverse_autoregressive(Z_DIM, [8])

    def model(self, x: torch.Tensor, annealing_factor: float = 1.0) -> None:
        pyro.module("decoder", self.decoder)
        s = pyro.param("x_scale", torch.ones(X_DIM), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=annealing_factor):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([Z_DIM]).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), s).to_event(1), obs=x)

    def base(self, x: torch.Tensor) -> dist.Distribution:
        h = self.encoder(x)
        scale = nn.functional.softplus(h[..., Z_DIM:]) + 1e-3
        return dist.Normal(h[..., :Z_DIM], scale).to_event(1)

    def guide(self, x: torch.Tensor, annealing_factor: float = 1.0) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=annealing_factor):
            pyro.sample("z", self.base(x))

    def flow_guide(self, x: torch.Tensor, annealing_factor: float = 1.0) -> None:
        """An IAF on the amortized Normal: a pyro_gen transform as a guide part."""
        pyro.module("encoder", self.encoder)
        pyro.module("flow", self.flow)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=annealing_factor):
            pyro.sample("z", dist.TransformedDistribution(self.base(x), [self.flow]))


def _data(n: int = N) -> torch.Tensor:
    return torch.randn(n, X_DIM, generator=torch.Generator().manual_seed(0))


def _vae_program(guide_kind: str) -> tuple[Callable, Callable]:
    vae = VAE()
    if guide_kind == "auto":
        guide = AutoAmortizedNormal(vae.model, hidden_dims=(8,))
        guide(_data()[:B])  # its parameters exist before either loop draws (fit's docstring)
        return vae.model, guide
    return vae.model, vae.flow_guide if guide_kind == "flow" else vae.guide


def _store() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _svi_then_fit(make_program, batches, loss, compile, epochs=2, svi_kwargs=(), **fit_kw):
    """Per-epoch losses per example and final param stores of Pyro's SVI and of ``fit``,
    from the same seed on the same batches. ``svi_kwargs[step]`` are the keyword
    arguments SVI's step ``step`` takes (the tutorial's annealing factor)."""
    svi_kwargs = list(svi_kwargs)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = make_program()
    pyro.set_rng_seed(1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), loss=loss)
    svi_losses, step = [], 0
    for _ in range(epochs):
        per_example = []
        for b in batches:
            kw = svi_kwargs[step] if svi_kwargs else {}
            per_example.append(svi.step(*b, **kw) / b[0].shape[0])
            step += 1
        svi_losses.append(sum(per_example) / len(per_example))
    expected = _store()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = make_program()
    pyro.set_rng_seed(1)
    result = fit(
        model,
        batches,
        guide=guide,
        loss=loss,
        optim=pyro.optim.Adam({"lr": 0.02}),
        epochs=epochs,
        compile=compile,
        progress=False,
        **fit_kw,
    )
    return [h["train_loss"] for h in result.history], svi_losses, _store(), expected


def _assert_same(got, svi, store, expected, exact: bool) -> None:
    assert sorted(store) == sorted(expected)
    if exact:
        assert got == pytest.approx(svi, rel=1e-6, abs=1e-6)
        for k in expected:
            assert torch.equal(store[k], expected[k]), k
    else:
        torch.testing.assert_close(got, svi, rtol=1e-5, atol=1e-5)
        for k in expected:
            torch.testing.assert_close(store[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)


# ---------------------------------------------------------------------------------------
# A Normal-Normal model with its exact posterior as guide: every bound is log p(x).


def nn_model(x: torch.Tensor, annealing_factor: float = 1.0) -> None:
    """z_i ~ N(mu, I), x_i | z_i ~ N(z_i, I), with a learned prior mean ``mu``."""
    mu = pyro.param("mu", torch.zeros(X_DIM))
    with pyro.plate("data", x.shape[0]):
        with poutine.scale(scale=annealing_factor):
            z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def exact_guide(x: torch.Tensor, annealing_factor: float = 1.0) -> None:
    """q(z_i | x_i) = p(z_i | x_i) = N((x_i + mu) / 2, I / 2)."""
    mu = pyro.param("mu", torch.zeros(X_DIM))
    with pyro.plate("data", x.shape[0]), poutine.scale(scale=annealing_factor):
        pyro.sample("z", dist.Normal((x + mu) / 2.0, 0.5**0.5).to_event(1))


def log_evidence(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """log p(x_i) = log N(x_i; mu, 2 I), per example."""
    return dist.Normal(mu, 2.0**0.5).to_event(1).log_prob(x)


LR = 0.05


# ---------------------------------------------------------------------------------------
# pyro.contrib.easyguide guides.


W_PRIOR = 1.0


def global_model(x: torch.Tensor, idx: torch.Tensor) -> None:
    """x_i = w + z_i + e_i, a global w and a data plate of N subsampled by ``idx``."""
    w = pyro.sample("w", dist.Normal(torch.zeros(X_DIM), W_PRIOR).to_event(1))
    with pyro.plate("data", N, subsample=idx):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([X_DIM]).to_event(1))
        pyro.sample("x", dist.Normal(w + z, 1.0).to_event(1), obs=x)


class MapGuide(EasyGuide):
    """map_estimate for w; one group of the local z under the guide's own data plate."""

    def guide(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        self.map_estimate("w")
        with self.plate("data", N, subsample=idx):
            group = self.group(match="z")
            loc = pyro.param("z_loc", torch.zeros(N, X_DIM))
            scale = pyro.param(
                "z_scale", torch.ones(N, X_DIM), constraint=dist.constraints.positive
            )
            group.sample("z_group", dist.Normal(loc[idx], scale[idx]).to_event(1))


def _easy(kind: str) -> tuple[Callable, Callable]:
    if kind == "map":
        guide: Callable = MapGuide(global_model)
    else:

        @easy_guide(global_model)
        def guide(self, x: torch.Tensor, idx: torch.Tensor) -> None:
            """Every latent in one Normal group each: w globally, z per example."""
            w_loc = pyro.param("w_loc", torch.zeros(X_DIM))
            w_scale = pyro.param("w_scale", torch.ones(X_DIM), constraint=dist.constraints.positive)
            self.group(match="w").sample("w_group", dist.Normal(w_loc, w_scale).to_event(1))
            with self.plate("data", N, subsample=idx):
                loc = pyro.param("z_loc", torch.zeros(N, X_DIM))
                self.group(match="z").sample("z_group", dist.Normal(loc[idx], 0.7).to_event(1))

    x = _data()
    guide(x[:B], torch.arange(B))  # creates the guide's parameters before either loop
    return global_model, guide


def _easy_batches() -> list[tuple]:
    x, idx = _data(), torch.arange(N)
    return [(x[i : i + B], idx[i : i + B]) for i in range(0, N, B)]
