"""pyro_gen transforms and guides in float64: every registered transform
(``tests/transforms/registry.py``) against ``torch.autograd.functional.jacobian`` to 1e-8,
its inverse round trip to 1e-10, ``torch.autograd.gradcheck`` of the forward map;
``AutoAmortizedNormal``, the IAF posterior and a flow guide built from pyro_gen transforms
train as Pyro's SVI does.

The two ways Pyro users get to double precision are both run: ``torch.set_default_dtype(
torch.float64)`` ("default"), or float32 defaults with float64 data and networks moved with
``.double()`` ("double"); float64_programs.py holds the programs and loops shared by the
test_float64_*.py files."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

import pyro_gen.transforms as T
from pyro_gen.vae import VAE, AutoAmortizedNormal, make_posterior
from tests.transforms.registry import CASES, Case
from tests.transforms.test_registry import _concrete, _context, _prepare, _sum_event
from tests.user_programs.float64_programs import (
    MODES,
    X_DIM,
    Z_DIM,
    N,
    _as_user_builds,
    _enter,
    _fit,
    _restore_default_dtype,  # noqa: F401 - pytest fixtures, used by name
    _store,
    _svi,
)

# ---------------------------------------------------------------------------- transforms


def _transform_param(case: Case):
    marks = [pytest.mark.xfail(reason=case.known_bug, strict=True)] if case.known_bug else []
    return pytest.param(case, id=case.name, marks=marks)


def _is_ode(case: Case) -> bool:
    return T.ContinuousFlow in case.covers


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", [_transform_param(c) for c in CASES])
def test_transform_in_float64(case, mode):
    """log|det J| vs autograd's Jacobian, the inverse round trip, and gradcheck of the
    forward map, built under the default dtype ("default") or moved with .double()."""
    if _is_ode(case):
        # exact only to its solver's tolerance, at which test_registry checks it in float64
        pytest.skip("an ODE flow: nothing tighter to check than tests/transforms' float64 run")
    if mode == "default" or case.default_float64:  # see Case.default_float64 (Pyro's own)
        torch.set_default_dtype(torch.float64)
    t = _prepare(case)  # built, moved with .double(), perturbed, warmed up, eval mode
    ct = _concrete(case, t, _context(case))
    torch.manual_seed(1)
    x = torch.randn(case.shape, dtype=torch.float64)
    y = ct(x)
    assert y.dtype == torch.float64
    ladj = _sum_event(ct.log_abs_det_jacobian(x, y), 0)
    assert ladj.dtype == torch.float64
    J = jacobian(lambda v: ct(v.reshape(case.shape)).reshape(-1), x.reshape(-1))
    ref = torch.linalg.slogdet(J.reshape(y.numel(), x.numel()))[1]
    torch.testing.assert_close(ladj, ref, atol=1e-8, rtol=0)
    if case.invertible:
        xb = torch.randn(3, *case.shape, dtype=torch.float64)
        ctb = _concrete(case, t, _context(case, 3))
        back = ctb.inv(ctb(xb).clone())  # clone: a cache would return xb itself
        assert back.dtype == torch.float64
        torch.testing.assert_close(back, xb, atol=1e-10, rtol=0)
    if mode == "double":
        # clone: the transforms cache their last input by identity, and gradcheck perturbs
        # its input in place. The residual block's implicit gradient (a hook on the
        # fixed point) is not called with undefined output gradients, which gradcheck's
        # extra check needs; its values are checked all the same.
        undefined = case.name != "residual_block"
        assert torch.autograd.gradcheck(
            lambda v: ct(v.clone()), (x.clone().requires_grad_(),), check_undefined_grad=undefined
        )


# -------------------------------------------------------------------------------- guides


def _flow_guide_program(mode: str):
    """A global latent whose guide is a flow of pyro_gen transforms registered with
    pyro.module, over a plain-Pyro likelihood."""
    flow = nn.ModuleList([T.ActNorm(X_DIM), T.affine_coupling(X_DIM, hidden_dims=[8])])
    flow = _as_user_builds(flow, mode)

    def model(x):
        w = pyro.sample("w", dist.Normal(x.new_zeros(X_DIM), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("flow", flow)
        base = dist.Normal(x.new_zeros(X_DIM), 1.0).to_event(1)
        pyro.sample("w", dist.TransformedDistribution(base, list(flow)))

    return model, guide


def _guide_program(kind: str, mode: str):
    pyro.set_rng_seed(0)
    x = torch.rand(N, X_DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batches = [(x[:8],), (x[8:],)]
    if kind == "flow":
        model, guide = _flow_guide_program(mode)
        guide(x[:8])  # ActNorm initialises from its first batch, outside the compared steps
        return model, guide, batches
    if kind == "auto":
        vae = _as_user_builds(VAE((X_DIM,), z_dim=Z_DIM, hidden_dim=8, likelihood="gaussian"), mode)
        guide = AutoAmortizedNormal(vae.model, hidden_dims=(8,))
        guide(x[:8])  # built on its first call, as fit's docstring asks before comparing
        return vae.model, guide, batches
    posterior = make_posterior("iaf", (X_DIM,), Z_DIM, 8)
    vae = VAE((X_DIM,), z_dim=Z_DIM, hidden_dim=8, likelihood="gaussian", posterior=posterior)
    vae = _as_user_builds(vae, mode)
    return vae.model, vae.guide, batches


# compile=False in both modes, the compiled step where networks are moved with .double()
# (the flow guide's transforms are the transform test's)
GUIDE_CASES = [(k, m, False) for k in ("auto", "iaf", "flow") for m in MODES]
GUIDE_CASES += [(k, "double", None) for k in ("auto", "iaf")]


@pytest.mark.parametrize(
    "kind,mode,compile",
    GUIDE_CASES,
    ids=[f"{k}-{m}-{'compile_false' if c is False else 'compiled'}" for k, m, c in GUIDE_CASES],
)
def test_pyro_gen_guides_train_as_pyro_svi_in_float64(kind, mode, compile):
    """AutoAmortizedNormal, the IAF posterior and a flow guide of pyro_gen transforms: the
    parameters, the encoder built lazily from float64 rows included, stay float64 and take
    SVI's steps (bit for bit with compile=False)."""
    _enter(mode)
    stores = []
    for use_fit in (True, False):
        pyro.clear_param_store()
        model, guide, batches = _guide_program(kind, mode)
        pyro.set_rng_seed(1)
        if use_fit:
            _fit(model, guide, batches, 2, compile)
        else:
            _svi(model, guide, batches, 2, None)
        stores.append(_store())
    ours, theirs = stores
    assert sorted(ours) == sorted(theirs) and ours
    for name, value in theirs.items():
        assert ours[name].dtype == torch.float64, name
        if compile is False:
            assert torch.equal(ours[name], value), name
        else:
            torch.testing.assert_close(ours[name], value, rtol=1e-11, atol=1e-13, msg=name)
