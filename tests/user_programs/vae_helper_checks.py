"""Shared checks for the tests of pyro_gen.vae's helpers (reconstruct, interpolate,
latent_statistics, kl_per_dim, refine_posterior, semi_amortized_elbo, impute, ...) on the Pyro
programs users write: a closed-form Normal KL, Pyro's own ELBO per example, the guard that a
helper leaves modes, buffers, the param store and the RNG as they were, and the test of one
clear error. Many of these cases were defects when first written (session 22); the tests
(test_vae_helpers_on_*.py) now guard the fixes."""

from __future__ import annotations

import contextlib

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_gen.vae import semi_amortized_elbo
from tests.user_programs import vae


@pytest.fixture(autouse=True)
def fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def binary(rows: int, cols: int = vae.X_DIM) -> torch.Tensor:
    return (torch.rand(rows, cols) < 0.3).float()


def normal_kl(q_loc, q_scale, p_loc, p_scale) -> torch.Tensor:
    """Closed-form KL(N(q) || N(p)) per dimension."""
    return (
        torch.log(p_scale / q_scale) + (q_scale**2 + (q_loc - p_loc) ** 2) / (2 * p_scale**2) - 0.5
    )


@contextlib.contextmanager
def untouched(*modules: torch.nn.Module, rng: bool = True):
    """Asserts that the block leaves the modules' modes and buffers (batch norm statistics),
    the param store's entries and the RNG as they were. Param-store entries are compared
    after the block's first call may have registered the user's networks (as any Pyro run
    of the model does), so only existing entries must keep their values. ``rng=False`` for
    helpers that sample by design."""
    state = pyro.util.get_rng_state()
    store = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    modes = [[m.training for m in mod.modules()] for mod in modules]
    buffers = [{k: b.clone() for k, b in mod.named_buffers()} for mod in modules]
    yield
    if rng:  # a helper that samples by design (refinement, imputation) may draw
        assert torch.equal(pyro.util.get_rng_state()["torch"], state["torch"]), "RNG advanced"
    for name, value in store.items():
        assert torch.equal(pyro.param(name).detach(), value), f"param {name} changed"
    for mod, mode, buf in zip(modules, modes, buffers):
        assert [m.training for m in mod.modules()] == mode, f"{type(mod).__name__} mode"
        for name, b in mod.named_buffers():
            assert torch.equal(b, buf[name]), f"buffer {name} changed"


def assert_clear(excinfo: pytest.ExceptionInfo, *words: str) -> None:
    """One clear error: a ValueError/TypeError of pyro_gen naming ``words`` (the helper,
    the site), not Pyro's shape-mismatch trace dump nor a torch error from deep inside."""
    message = str(excinfo.value)
    assert excinfo.type in (ValueError, TypeError), f"{excinfo.type.__name__}: {message}"
    assert "Trace Shapes" not in message, message
    for word in words:
        assert word in message, message


def clear_error(fn, *words: str) -> None:
    with pytest.raises(Exception) as excinfo:
        fn()
    assert_clear(excinfo, *words)


def pyro_elbo(
    model, guide, *args, seed: int, particles: int, enum: bool = False, nesting: int = 1, **kwargs
):
    """Pyro's own ELBO per example (vectorized particles, as the refinement runs)."""
    pyro.set_rng_seed(seed)
    loss_cls = TraceEnum_ELBO if enum else Trace_ELBO
    loss = loss_cls(num_particles=particles, vectorize_particles=True, max_plate_nesting=nesting)
    with torch.no_grad():
        return -loss.loss(model, guide, *args, **kwargs) / args[0].shape[0]


def refined_from_the_start(model, x, seed: int, particles: int, **kwargs) -> float:
    """``semi_amortized_elbo`` with no step: the guide's own ELBO (same seed as Pyro's)."""
    pyro.set_rng_seed(seed)
    return semi_amortized_elbo(model, x, 0, num_particles=particles, **kwargs)
