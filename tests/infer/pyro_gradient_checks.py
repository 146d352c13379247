"""Shared checks for CompiledSVI's loss and gradients on the model/guide pairs of Pyro's own
gradient tests (test_pyro_gradient_*.py).

Pyro checks its ELBOs' gradients in tests/infer/test_gradient.py, test_conjugate_gradients.py
and test_enum.py. The pairs, written again (read from Pyro, not copied), run through
:class:`~pyro_gen.infer.compiled.CompiledSVI` (``fit``'s default step) and through Pyro's
``loss.loss_and_grads``, each call on the same seed from the same param store, so both see
the same draws (:func:`same_as_pyro`):

- the loss and every parameter's gradient must be Pyro's, to float rounding;
- the step must take the path the pair states: its recorded program (which then ran every
  call after each signature's first plain one), or Pyro's step after one log line on the
  ``"pyro_gen"`` logger saying why;
- where Pyro's test compares with an analytic gradient, the compiled step's gradient is
  compared with it too (:func:`_assert_near`), at Pyro's precision.

Pyro's grid is trimmed to the rows that take a new path (each recording costs a second or
more); rows that fall back run few particles, as their gradient is Pyro's own."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import pyro
import pytest
import torch

from pyro_gen.infer.compiled import CompiledSVI

COMPILED = "compiled"
NOT_REPARAM = r"guide site 'z' \(\w+\) is not reparameterizable"
TRACEGRAPH = "TraceGraph_ELBO is not supported"
DATA = torch.tensor([-0.5, 2.0])
# E[d(-ELBO)/d loc] and E[d(-ELBO)/d scale] of Pyro's two-point pair at loc=0, scale=1
EXPECTED = {"loc": torch.tensor([0.5, -2.0]), "scale": torch.tensor([2.0])}
# Vectorized particles for a mean gradient: the scale's per-particle gradient has a standard
# deviation of about 4.5, so Pyro's precision of 0.06 is four standard errors.
PARTICLES = 100_000


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


def _pyro_loss_and_grads(loss: Any, model, guide, args: tuple, kwargs: dict) -> Any:
    """As Pyro's SVI takes a loss: an ELBO's ``loss_and_grads``, or a callable loss
    differentiated (Pyro's ``DiffTrace_ELBO`` in test_gradient.py)."""
    if hasattr(loss, "loss_and_grads"):
        return loss.loss_and_grads(model, guide, *args, **kwargs)
    value = loss(model, guide, *args, **kwargs)
    value.backward()
    return value.detach()


def same_as_pyro(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    make_loss: Callable[[], Any],
    calls: list[Call],
    path: str,
    caplog: pytest.LogCaptureFixture,
) -> tuple[list[Result], CompiledSVI]:
    """Runs ``calls`` through Pyro's ``loss_and_grads`` and ``CompiledSVI.loss_and_grads``:
    the same losses and gradients call by call, and the path ``path`` (COMPILED or a regular
    expression of the logged fallback reason). Returns the compiled step's results, and the
    step."""
    pyro_loss = make_loss()
    theirs = _calls(lambda *a, **k: _pyro_loss_and_grads(pyro_loss, model, guide, a, k), calls)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        # built here: an unsupported loss says so when the step is made
        svi = CompiledSVI(model, guide, pyro.optim.SGD({"lr": 0.1}), make_loss(), backend="fx")
        ours = _calls(svi.loss_and_grads, calls)
    off = [r.getMessage() for r in caplog.records if "compiled SVI step off" in r.getMessage()]
    if path == COMPILED:
        assert svi.compiled and not off, (svi.fallback_reason, off)
        # one plain call for the input signature, then the recorded program every call
        assert sum(p.calls for p in svi._programs.values()) == len(calls) - 1
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
    return ours, svi


def _assert_near(grads: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], prec: float):
    assert grads.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(
            grads[name], expected[name].to(grads[name]), rtol=0, atol=prec, msg=name
        )


def _vectorized(elbo: type, particles: int, nesting: int | None = 1) -> Callable[[], Any]:
    """Pyro's ELBO with vectorized particles; ``nesting`` None lets the ELBO guess it."""

    def make_loss():
        return elbo(
            **({} if nesting is None else {"max_plate_nesting": nesting}),
            num_particles=particles,
            vectorize_particles=True,
            strict_enumeration_warning=False,
        )

    return make_loss
