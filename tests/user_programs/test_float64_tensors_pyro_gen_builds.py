"""Modules that build tensors themselves (time embedding, VampPrior init, noise schedule,
decoders' draws) follow the program's dtype instead of rounding to float32; a float64 DDPM
trains as Pyro's SVI does, on the float64 schedule.

The two ways Pyro users get to double precision are both run: ``torch.set_default_dtype(
torch.float64)`` ("default"), or float32 defaults with float64 data and networks moved with
``.double()`` ("double"); float64_programs.py holds the programs and loops shared by the
test_float64_*.py files."""

from __future__ import annotations

import math

import pyro
import pyro.optim
import pytest
import torch

from pyro_gen.vae import VAE
from tests.user_programs.float64_programs import (
    MODES,
    X_DIM,
    Z_DIM,
    _as_user_builds,
    _data,
    _enter,
    _fit,
    _restore_default_dtype,  # noqa: F401 - pytest fixtures, used by name
    _store,
    _svi,
)


def test_parts_built_under_float64_defaults_are_float64():
    """Each part made its own float32 tensor whatever the default: a time embedding's
    frequencies (its MLP then refused them), VampPrior pseudo-inputs from ``init``, and a
    noise schedule's coefficients (a float64 DDPM's bound in float32 precision)."""
    from pyro_gen.diffusion.schedules import NoiseSchedule, linear_betas
    from pyro_gen.nn.time_embedding import SinusoidalTimeEmbedding
    from pyro_gen.vae import VampPrior

    torch.set_default_dtype(torch.float64)
    t = torch.tensor([0.1, 0.7])
    assert SinusoidalTimeEmbedding(8, out_dim=6)(t).dtype == torch.float64
    emb = SinusoidalTimeEmbedding(8)(t)
    half = torch.arange(4, dtype=torch.float64) / 4
    args = t[:, None] * torch.exp(-math.log(10000.0) * half)
    torch.testing.assert_close(emb, torch.cat([args.sin(), args.cos()], -1), rtol=0, atol=1e-15)

    vamp = VampPrior((X_DIM,), num_components=3, init=torch.rand(3, X_DIM))
    assert all(p.dtype == torch.float64 for p in vamp.parameters())

    betas = linear_betas(5, 0.1, 0.5).double()
    schedule = NoiseSchedule(betas)
    exact = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(schedule.alphas_cumprod, exact, rtol=1e-15, atol=0)


@pytest.mark.parametrize("likelihood", ["gaussian", "categorical"])
def test_decoders_draws_keep_a_double_models_dtype(likelihood):
    """``decode(z, mean=False)`` / ``sample(mean=False)`` of a .double() VAE and hierarchical
    VAE rounded their draws to float32 (``.float()`` / the default dtype)."""
    from pyro_gen.vae import HierarchicalVAE

    z = torch.randn(5, Z_DIM, dtype=torch.float64)
    vae = VAE((X_DIM,), z_dim=Z_DIM, hidden_dim=8, likelihood=likelihood).double()
    assert vae.decode(z, mean=False).dtype == torch.float64
    assert vae.sample(5, mean=False).dtype == torch.float64
    hvae = HierarchicalVAE((X_DIM,), z_dims=(Z_DIM, 2), hidden_dim=8, likelihood=likelihood)
    hvae = hvae.double()
    pyro.set_rng_seed(0)
    draws = hvae.decode(z, mean=False)
    assert draws.dtype == torch.float64
    if likelihood == "gaussian":  # the draw itself: the decoder's mean plus float64 noise
        pyro.set_rng_seed(0)
        expected = hvae.decoder(z).sample()
        assert torch.equal(draws, expected)


@pytest.mark.parametrize("mode", MODES)
def test_a_float64_ddpm_trains_as_pyro_svi(mode):
    """A DDPM (TimeMLP network, time-plate bound) built under float64 defaults failed at its
    first step (its time embedding's float32 features into a float64 MLP); moved with
    .double(), its schedule held float32-rounded coefficients. Now its coefficients are
    the float64 ones and fit takes SVI's steps bit for bit."""
    from pyro_gen.diffusion import build_ddpm
    from pyro_gen.diffusion.schedules import make_schedule

    _enter(mode)
    x = _data()[:, :2]
    stores = []
    for use_fit in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        ddpm = _as_user_builds(build_ddpm((2,), timesteps=10, hidden_dim=8), mode)
        pyro.set_rng_seed(1)
        if use_fit:
            _fit(ddpm.model, ddpm.guide, [(x[:8],), (x[8:],)], 1, False)
        else:
            _svi(ddpm.model, ddpm.guide, [(x[:8],), (x[8:],)], 1, None)
        stores.append(_store())
    for name, value in stores[1].items():
        assert stores[0][name].dtype == torch.float64, name
        assert torch.equal(stores[0][name], value), name
    torch.set_default_dtype(torch.float64)  # the float64 computation, as a reference
    reference = make_schedule("linear", 10)
    for name, value in reference.named_buffers():
        assert torch.equal(getattr(ddpm.schedule, name), value), name
    exact = torch.cumprod(1 - reference.betas, 0)
    torch.testing.assert_close(ddpm.schedule.alphas_cumprod, exact, rtol=1e-15, atol=0)
