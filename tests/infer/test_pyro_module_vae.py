"""pyro_gen's VAE with a decoder a Pyro user made a ``PyroModule`` (``to_pyro_module_``, as
in Pyro's "Modules in Pyro" tutorial): trained by ``fit`` as by Pyro's SVI, saved whole."""

from __future__ import annotations

import inspect
import io

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.nn.module import to_pyro_module_

import pyro_gen.vae as V
from pyro_gen.infer import fit
from pyro_gen.transforms._base import PicklableModule
from pyro_gen.vae import VAE
from pyro_gen.vae.decoders import MLPDecoder
from tests.infer.pickle_roundtrip import assert_survives_pickling


def _vae() -> VAE:
    decoder = MLPDecoder(2, (4,), (5,), "gaussian")
    to_pyro_module_(decoder)  # its parameters now also reach the store as PyroModule params
    return VAE((4,), z_dim=2, hidden_dim=5, likelihood="gaussian", decoder=decoder)


def _data() -> torch.Tensor:
    return torch.randn(16, 4, generator=torch.Generator().manual_seed(0))


def _store() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_trains_on_fits_compiled_and_plain_steps_as_with_pyros_svi():
    x, runs = _data(), {}
    for mode in ("compiled", "plain", "svi"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = _vae()
        optim = pyro.optim.Adam({"lr": 0.05})
        if mode == "svi":
            svi = SVI(vae.model, vae.guide, optim, Trace_ELBO())
            for _ in range(4):
                svi.step(x[torch.randperm(16)])  # fit draws each epoch's order first
        else:
            fit(vae, x, steps=4, batch_size=16, optim=optim, progress=False,
                compile=None if mode == "compiled" else False)  # fmt: skip
        runs[mode] = _store()
    # the PyroModule decoder's parameters are in the store once, under the names it gives
    # them (the VAE's pyro.module stored each a second time as "decoder$$$net.0.weight")
    assert "net.0.weight" in runs["svi"] and "decoder$$$net.0.weight" not in runs["svi"]
    for mode in ("compiled", "plain"):
        assert runs[mode].keys() == runs["svi"].keys()
        for name, value in runs[mode].items():
            torch.testing.assert_close(value, runs["svi"][name], atol=1e-6, rtol=1e-5, msg=name)


def test_a_trained_vae_saves_whole_and_loads_with_its_parameters():
    """``torch.save(vae)`` after training failed: the param store leaves a weakref on every
    parameter that ``pyro.module`` registered (the encoder's here)."""
    pyro.clear_param_store()
    vae = _vae()
    fit(vae, _data(), steps=2, batch_size=16, progress=False)
    assert_survives_pickling(vae)
    # the param store still trains the same tensors afterwards
    fit(vae, _data(), steps=1, batch_size=16, progress=False)


def test_every_public_vae_module_drops_the_param_store_weakrefs():
    for name in V.__all__:
        obj = getattr(V, name)
        if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
            assert issubclass(obj, PicklableModule | pyro.nn.PyroModule), name


def test_a_trained_bayesian_vae_saves_whole_and_draws_the_same_weights():
    """BayesianVAE's PyroSample priors were lambdas, which ``torch.save`` cannot pickle."""
    pyro.clear_param_store()
    vae = V.BayesianVAE((4,), z_dim=2, hidden_dims=(5,), likelihood="gaussian")
    fit(vae, _data(), steps=2, batch_size=16, progress=False)
    buf = io.BytesIO()
    torch.save(vae, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    draws = []
    for module in (vae, loaded):
        pyro.set_rng_seed(3)
        draws.append(pyro.poutine.trace(module.model).get_trace(_data()).nodes)
    weight = "decoder.layers.0.weight"
    assert draws[0][weight]["value"].shape == (5, 2)
    for name in (weight, "x"):
        torch.testing.assert_close(draws[1][name]["value"], draws[0][name]["value"], msg=name)
        new, old = (d[name]["fn"].log_prob(d[name]["value"]) for d in draws[::-1])
        torch.testing.assert_close(new, old, msg=name)
