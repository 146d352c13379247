"""CompiledSVI's loss and gradients on the model/guide pairs of Pyro's own gradient tests.

Pyro checks its ELBOs' gradients in tests/infer/test_gradient.py (plates with subsampling,
a particle plate nested around a data plate, ``poutine.scale``, vectorized and sequential
particles, reparameterized and score-function guide sites, ``TraceMeanField_ELBO``'s
analytic KL, a guide site enumerated by sampling), test_conjugate_gradients.py (a Gaussian
chain whose guide is the exact posterior, ``TraceGraph_ELBO`` with decaying-average
baselines) and test_enum.py (discrete sites enumerated in guide and model, masks and
scales, against closed forms and hand-summed models). The same pairs, written again here,
run through :class:`~pyro_gen.infer.compiled.CompiledSVI` (``fit``'s default step) and
through Pyro's ``loss.loss_and_grads``, each call on the same seed from the same param
store, so both see the same draws:

- the loss and every parameter's gradient must be Pyro's, to float rounding;
- the step must take the path the pair states: its recorded program (which then ran every
  call after each signature's first plain one), or Pyro's step after one log line on the
  ``"pyro_gen"`` logger saying why;
- where Pyro's test compares with an analytic gradient, the compiled step's gradient is
  compared with it too: per draw (the pathwise and score-function formulas of
  test_particle_gradient), exactly (fully enumerated discrete sites) or averaged over
  enough vectorized particles, at Pyro's precision.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import constraints
from pyro.distributions.testing import fakes
from pyro.infer import (
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    config_enumerate,
)
from torch.distributions import kl_divergence

from pyro_gen.infer.compiled import CompiledSVI

COMPILED = "compiled"
NOT_REPARAM = r"guide site 'z' \(\w+\) is not reparameterizable"
TRACEGRAPH = "TraceGraph_ELBO is not supported"
DATA = torch.tensor([-0.5, 2.0])
# E[d(-ELBO)/d loc] and E[d(-ELBO)/d scale] of Pyro's two-point pair at loc=0, scale=1
EXPECTED = {"loc": torch.tensor([0.5, -2.0]), "scale": torch.tensor([2.0])}


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
    torch.set_default_dtype(old)


Call = tuple[tuple, dict]
Result = tuple[float, dict[str, torch.Tensor]]


def _grads() -> dict[str, torch.Tensor]:
    out = {}
    for name, p in pyro.get_param_store().named_parameters():
        if p.grad is not None:
            out[name] = p.grad.detach().clone()
            p.grad = None
    return out


def _calls(step: Callable[..., Any], calls: list[Call]) -> list[Result]:
    """Each call's loss and gradients, call ``i`` on seed ``i``, from an empty param store.

    Whole sequences rather than interleaved calls: a decaying-average baseline keeps its
    state in the param store, which each sequence must move alike."""
    pyro.clear_param_store()
    out = []
    for seed, (args, kwargs) in enumerate(calls):
        pyro.set_rng_seed(seed)
        out.append((float(step(*args, **kwargs)), _grads()))
    return out


def same_as_pyro(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    make_loss: Callable[[], Any],
    calls: list[Call],
    path: str,
    caplog: pytest.LogCaptureFixture,
    *,
    signatures: int = 1,
) -> list[Result]:
    """Runs ``calls`` through Pyro's ``loss_and_grads`` and ``CompiledSVI.loss_and_grads``:
    the same losses and gradients call by call, and the path ``path`` (COMPILED or a regular
    expression of the logged fallback reason). Returns the compiled step's results."""
    pyro_loss = make_loss()
    theirs = _calls(lambda *a, **k: pyro_loss.loss_and_grads(model, guide, *a, **k), calls)
    svi = CompiledSVI(model, guide, pyro.optim.SGD({"lr": 0.1}), make_loss(), backend="fx")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        ours = _calls(svi.loss_and_grads, calls)
    off = [r.getMessage() for r in caplog.records if "compiled SVI step off" in r.getMessage()]
    if path == COMPILED:
        assert svi.compiled and not off, (svi.fallback_reason, off)
        # each signature: one plain call, then the recorded program every call
        assert sum(p.calls for p in svi._programs.values()) == len(calls) - signatures
    else:
        assert not svi.compiled and len(off) == 1, off
        assert re.search(path, svi.fallback_reason), svi.fallback_reason
    for i, ((loss, grads), (want, want_grads)) in enumerate(zip(ours, theirs)):
        assert loss == pytest.approx(want, rel=1e-9, abs=1e-9), f"loss of call {i}"
        assert grads.keys() == want_grads.keys(), (i, sorted(grads), sorted(want_grads))
        for name in grads:
            torch.testing.assert_close(
                grads[name], want_grads[name], rtol=1e-7, atol=1e-9, msg=f"{name}, call {i}"
            )
    return ours


def _assert_near(grads: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], prec: float):
    assert grads.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(
            grads[name], expected[name].to(grads[name]), rtol=0, atol=prec, msg=name
        )


# --- test_gradient.py: the two-point pair ---------------------------------------------------


def normal_of(reparam: str) -> type:
    return fakes.NonreparameterizedNormal if reparam == "nonreparam" else dist.Normal


def two_point_pair(reparam: str, subsample_size: int = 2, scale: float = 1.0):
    """Pyro's pair: z_i ~ N(0, 1), x_i ~ N(z_i, 1) observed at DATA; q(z_i) = N(loc_i, scale),
    under a data plate subsampled by the indices the caller passes."""
    normal = normal_of(reparam)
    has_rsample = {"reparam-False": False, "reparam-True": True}.get(reparam)

    def model(subsample=None):
        with pyro.plate("data", len(DATA), subsample_size, subsample) as ind:
            z = pyro.sample("z", normal(0.0, 1.0))
            pyro.sample("x", normal(z, 1.0), obs=DATA[ind])

    def guide(subsample=None):
        s = pyro.param("scale", lambda: torch.tensor([1.0]))
        with pyro.plate("data", len(DATA), subsample_size, subsample):
            loc = pyro.param("loc", lambda: torch.zeros(len(DATA)), event_dim=0)
            q = normal(loc, s)
            if has_rsample is not None:
                q.has_rsample_(has_rsample)
            pyro.sample("z", q)

    if scale != 1.0:
        model, guide = poutine.scale(model, scale=scale), poutine.scale(guide, scale=scale)
    return model, guide


REPARAMS = ["reparam", "reparam-False", "reparam-True", "nonreparam"]


def _pathwise(reparam: str) -> bool:
    return reparam in ("reparam", "reparam-True")


@pytest.mark.parametrize("reparam", REPARAMS)
@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceEnum_ELBO])
def test_particle_gradient(elbo, reparam, caplog):
    """Pyro's test_particle_gradient: one particle, the gradient against its closed form
    on the draws the step took (pathwise, or score function)."""
    model, guide = two_point_pair(reparam)

    def make_loss():
        return elbo(max_plate_nesting=1, strict_enumeration_warning=False)

    path = COMPILED if _pathwise(reparam) else NOT_REPARAM
    results = same_as_pyro(model, guide, make_loss, [((), {})] * 3, path, caplog)
    # The last call (the program's replay) against the formula on its own draws (seed 2).
    pyro.set_rng_seed(2)
    guide_tr = poutine.trace(guide).get_trace()
    model_tr = poutine.trace(poutine.replay(model, guide_tr)).get_trace()
    guide_tr.compute_log_prob()
    model_tr.compute_log_prob()
    z = guide_tr.nodes["z"]["value"].detach()
    loc, scale = pyro.param("loc").detach(), pyro.param("scale").detach()
    if _pathwise(reparam):
        expected = {
            "scale": -(-z * (z - loc) + (DATA - z) * (z - loc) + 1).sum(0, keepdim=True) / scale,
            "loc": -(-z + (DATA - z)),
        }
    else:
        elbo_value = (
            model_tr.nodes["x"]["log_prob"]
            + model_tr.nodes["z"]["log_prob"]
            - guide_tr.nodes["z"]["log_prob"]
        ).detach()
        dlogq_dloc = (z - loc) / scale**2
        dlogq_dscale = (z - loc) ** 2 / scale**3 - 1 / scale
        # TraceEnum_ELBO's surrogate keeps log q's own gradient (mean zero); Trace_ELBO's not
        own = 1.0 if elbo is TraceEnum_ELBO else 0.0
        expected = {
            "scale": -(dlogq_dscale * (elbo_value - own)).sum(0, keepdim=True),
            "loc": -(dlogq_dloc * (elbo_value - own)),
        }
    _assert_near(results[-1][1], expected, 1e-9)
