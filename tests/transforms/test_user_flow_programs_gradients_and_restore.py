"""The Pyro programs with pyro_gen flows (an ``AutoNormalizingFlow`` guide, a VAE with a flow
prior, a CVAE with a conditional flow guide): SVI's gradients are the finite differences of
the loss, and trained programs restore bit for bit (Pyro's param store saved and loaded into
modules built afresh, ``torch.save``, pickle).

Each program is one a Pyro user writes, unchanged (flow_user_programs.py holds those shared
by several files). Every loss is checked against the same bound computed by hand from the
values the guide drew, with each flow density taken by the change of variables through an
autograd Jacobian (float64)."""

from __future__ import annotations

import math
import pickle

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormalizingFlow

from tests.transforms.flow_user_programs import (
    _CVAE,
    F64,
    _FlowPriorVAE,
    _global_local_model,
    _guide_flow,
)

# ------------------------------------------------------------------ gradients


def _assert_gradients_are_finite_differences(loss_and_grads, loss, params, h=1e-6) -> None:
    """Each parameter's gradient from ``loss_and_grads`` (at its largest entry) is the
    central difference of the loss, both evaluated on the same draws (same seed; the guide
    is reparameterized, so its draws move smoothly with its parameters). A gradient through
    a stale cached value or a detached path would differ."""
    for p in params:
        p.grad = None
    pyro.set_rng_seed(11)
    loss_and_grads()
    assert all(p.grad is not None for p in params)
    for p in params[:: max(1, len(params) // 8)]:  # eight spread over the layers: time
        i = int(p.grad.abs().argmax())
        values = []
        for step in (h, -2 * h, h):
            with torch.no_grad():
                p.view(-1)[i] += step
            pyro.set_rng_seed(11)
            values.append(loss())
        fd = (values[0] - values[1]) / (2 * h)
        assert math.isclose(fd, float(p.grad.view(-1)[i]), rel_tol=1e-4, abs_tol=1e-6)


@pytest.mark.parametrize("program", ["autonormalizingflow", "vae_flow_prior", "cvae"])
def test_svi_gradients_are_the_finite_differences_of_the_loss(program: str) -> None:
    torch.manual_seed(6)
    elbo = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    if program == "autonormalizingflow":
        x = torch.randn(3, 2, dtype=F64)
        model, guide, args = _global_local_model, None, (x,)
        guide = AutoNormalizingFlow(model, _guide_flow)
        guide(x)
        params = list(guide.get_transform().parameters())
    elif program == "vae_flow_prior":
        vae = _FlowPriorVAE(n_total=8)
        vae.flows.eval()  # the residual block's spectral norm: no power iteration per call
        model, guide, args = vae.model, vae.guide, (torch.randn(4, 3, dtype=F64),)
        params = list(vae.parameters())
    else:
        cvae = _CVAE()
        model, guide = cvae.model, cvae.guide
        args = (torch.randn(3, 3, dtype=F64), torch.randn(3, 2, dtype=F64))
        params = list(cvae.parameters())
    _assert_gradients_are_finite_differences(
        lambda: elbo.loss_and_grads(model, guide, *args),
        lambda: elbo.loss(model, guide, *args),
        params,
    )


# ------------------------------------------------------------------ saving and restoring


def _program(name: str) -> tuple:
    """A program of this file (module, model args) built from the current seed."""
    if name == "cvae":
        return _CVAE(), (torch.randn(3, 3, dtype=F64), torch.randn(3, 2, dtype=F64))
    return _FlowPriorVAE(n_total=8), (torch.randn(4, 3, dtype=F64),)


def _loss(program: torch.nn.Module, args: tuple) -> float:
    pyro.set_rng_seed(5)  # the same draws for every copy compared
    return Trace_ELBO().loss(program.model, program.guide, *args)


@pytest.mark.parametrize("name", ["cvae", "vae_flow_prior"])
def test_trained_programs_restore_bit_for_bit(name: str, tmp_path) -> None:
    """After a few SVI steps: Pyro's param store saved and loaded into modules built afresh
    (another seed, ``pyro.module(..., update_module_params=True)``), ``torch.save`` of the
    whole program and ``pickle`` after ``pyro.module`` all give the same loss on the same
    draws, to the bit."""
    torch.manual_seed(7)
    program, args = _program(name)
    elbo = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    svi = pyro.infer.SVI(program.model, program.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    for _ in range(3):
        svi.step(*args)
    expected = _loss(program, args)
    pyro.get_param_store().save(tmp_path / "params.pt")
    torch.save(program, tmp_path / "program.pt")
    pickled = pickle.dumps(program)

    pyro.clear_param_store()
    torch.manual_seed(123)
    fresh, _ = _program(name)
    pyro.get_param_store().load(tmp_path / "params.pt")
    for site, module in (("encoder", fresh.encoder), ("decoder", fresh.decoder)):
        pyro.module(site, module, update_module_params=True)
    pyro.module("flows", fresh.flows, update_module_params=True)
    assert _loss(fresh, args) == expected
    pyro.clear_param_store()
    assert _loss(torch.load(tmp_path / "program.pt", weights_only=False), args) == expected
    assert _loss(pickle.loads(pickled), args) == expected
