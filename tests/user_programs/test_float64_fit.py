"""``fit`` on users' float64 Pyro programs (a plain-Pyro VAE, a model with a global latent
over a subsampled plate): ``compile=False`` takes ``pyro.infer.SVI``'s steps bit for bit, the
default compiled step agrees to float64 rounding, the parameters stay float64, and the
recorded losses are Pyro's float64 ones; mixed precision is refused before training; float32
data into a float64 network fails as Pyro's SVI does, and float32 observations promote as in
Pyro.

The two ways Pyro users get to double precision are both run: ``torch.set_default_dtype(
torch.float64)`` ("default"), or float32 defaults with float64 data and networks moved with
``.double()`` ("double"); float64_programs.py holds the programs and loops shared by the
test_float64_*.py files."""

from __future__ import annotations

import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_gen.infer import fit
from tests.user_programs.float64_programs import (
    MODES,
    PlainVAE,
    _data,
    _enter,
    _fit_and_svi,
    _program,
    _regression_data,
    _restore_default_dtype,  # noqa: F401 - pytest fixtures, used by name
    _store,
    regression,
)


@pytest.mark.parametrize("compile", [False, None], ids=["compile_false", "compiled"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["vae", "global"])
def test_fit_takes_pyros_float64_steps(kind, mode, compile):
    """compile=False is SVI bit for bit; the compiled step agrees to float64 rounding; the
    parameters stay float64."""
    losses, svi_losses, store, expected = _fit_and_svi(kind, mode, compile)
    torch.testing.assert_close(losses, svi_losses, rtol=1e-12, atol=0)
    assert sorted(store) == sorted(expected)
    for name, value in expected.items():
        assert store[name].dtype == torch.float64, name
        if compile is False:
            assert torch.equal(store[name], value), name
        else:
            torch.testing.assert_close(store[name], value, rtol=1e-12, atol=1e-14, msg=name)


def test_recorded_losses_of_a_double_model_are_pyros_float64_losses():
    """The history's train_loss is the mean of SVI's float64 losses, not their float32
    rounding (a relative 1e-8 of it shows): the plain update (compile=False, a fallback,
    the compiled step's recording step) once wrapped Pyro's float loss in the default dtype."""
    losses, svi_losses, _, _ = _fit_and_svi("vae", "double", False)
    torch.testing.assert_close(losses, svi_losses, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_mixed_precision_on_a_float64_model_is_refused_before_training(mode):
    """Autocast casts float32 inputs only: bfloat16 "mixed precision" on a float64 model would
    train in float64, silently. fit refuses it, naming the parameters, before any step."""
    _enter(mode)
    pyro.clear_param_store()
    model, guide, batches = _program("vae", mode)
    with pytest.raises(ValueError, match=r"float64: \[.*\]\. Cast the model to float32"):
        fit(model, batches, guide=guide, epochs=1, progress=False, mixed_precision=torch.bfloat16)
    assert all(v.grad is None for v in pyro.get_param_store().values())


@pytest.mark.parametrize("compile", [False, None], ids=["compile_false", "compiled"])
def test_float32_data_into_a_float64_network_fails_as_pyro_does(compile):
    """No silent cast of the data or the network: the error carries Pyro's own, and names
    the batch's dtype and the network's, with the conversions either way."""
    m = PlainVAE().double()
    x = _data().float()
    with pytest.raises(RuntimeError) as pyros:
        SVI(m.model, m.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()).step(x[:8])
    pyro.clear_param_store()
    with pytest.raises(RuntimeError) as ours:
        fit(m.model, x, guide=m.guide, epochs=1, batch_size=8, compile=compile, progress=False)
    assert str(pyros.value).splitlines()[0] in str(ours.value)
    assert "the batch is float32, Linear holds float64" in str(ours.value)
    assert "x.to(torch.float64)" in str(ours.value) and "module.float()" in str(ours.value)


@pytest.mark.parametrize("compile", [False, None], ids=["compile_false", "compiled"])
def test_float32_observations_of_a_float64_model_promote_as_in_pyro(compile):
    """A model with float64 params observing float32 data: Pyro's densities promote to
    float64; fit trains the same float64 parameters."""
    torch.set_default_dtype(torch.float64)
    x, y = _regression_data(torch.float32)
    stores = []
    for use_fit in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        if use_fit:
            fit(regression, [(x, y)], guide=lambda x, y: None, epochs=5, compile=compile,
                progress=False, optim=pyro.optim.Adam({"lr": 0.05}))  # fmt: skip
        else:
            svi = SVI(regression, lambda x, y: None, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
            for _ in range(5):
                svi.step(x, y)
        stores.append(_store())
    for name, value in stores[1].items():
        assert stores[0][name].dtype == torch.float64
        torch.testing.assert_close(stores[0][name], value, rtol=1e-12, atol=0, msg=name)
