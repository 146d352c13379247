"""The comparison: a row trained by ``fit`` and by Pyro's own SVI loop, step by step."""

from __future__ import annotations

import copy
import logging
import math
import re
from typing import Any
from unittest import mock

import pyro
import pyro.util
import pytest
import torch
from pyro.infer import SVI

from pyro_gen.infer import changes_only_tensors, fit
from pyro_gen.infer.compiled import CompiledSVI
from pyro_gen.infer.loss_value import subsampled_size

from .case import COMPILED, PLAIN_UNSAID, SEED, Autoguide, Case


def param_values() -> dict[str, torch.Tensor]:
    """The unconstrained values the optimizer moves, by name."""
    return {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


def _step_args(batch: Any) -> tuple[tuple, dict]:
    if batch is None:
        return (), {}
    return (batch, {}) if isinstance(batch, tuple) else ((), batch)


def _size(batch: Any) -> int:
    args, kwargs = _step_args(batch)
    tensors = [t for t in (*args, *kwargs.values()) if torch.is_tensor(t) and t.dim() > 0]
    return tensors[0].shape[0] if tensors else 1


_INITIAL_STATES: dict[int, dict[str, torch.Tensor]] = {}


def _put_back(case: Case) -> None:
    """Modules start each run from the state they had before the first, autoguides
    unbuilt."""
    if isinstance(case.guide, Autoguide):
        case.guide.guide = None
    for m in case.modules:
        initial = _INITIAL_STATES.setdefault(id(m), copy.deepcopy(m.state_dict()))
        m.load_state_dict(initial)


def _states(case: Case) -> list[dict[str, torch.Tensor]]:
    return [copy.deepcopy(m.state_dict()) for m in case.modules]


def _pyro_run(case: Case) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """Pyro's own SVI loop: the parameters after each step, and each step's loss."""
    pyro.clear_param_store()
    _put_back(case)
    pyro.set_rng_seed(SEED)
    if isinstance(case.guide, Autoguide):
        # fit builds a lazy guide in a warm-up run that leaves the RNG where it was (its
        # prototype trace draws from the model): build it so here too
        rng = pyro.util.get_rng_state()
        args, kwargs = _step_args(case.batches[0] if case.batches else None)
        case.guide(*args, **kwargs)
        pyro.util.set_rng_state(rng)
    svi = SVI(case.model, case.guide, case.optim(), case.loss())
    params, losses = [], []
    for step in range(case.steps):
        args, kwargs = _step_args(case.batches[step % len(case.batches)] if case.batches else None)
        losses.append(svi.step(*args, **kwargs))
        params.append(param_values())
    return params, losses


def _fit_run(case: Case) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
    """fit's run (default, compiled path): the parameters after each step, its history."""
    pyro.clear_param_store()
    _put_back(case)
    pyro.set_rng_seed(SEED)
    params: list[dict[str, torch.Tensor]] = []
    result = fit(
        case.model, () if case.batches is None else case.batches, guide=case.guide,
        loss=case.loss(), steps=case.steps, optim=case.optim(), progress=False,
        # it only reads: no check of the recording after it
        step_callbacks=[changes_only_tensors(lambda step, model: params.append(param_values()))],
    )  # fmt: skip
    return params, result.history


def _epoch_losses(case: Case, losses: list[float]) -> list[float]:
    """The train_loss records fit writes for these step losses: per epoch (100 steps when
    there is no data, else one pass over the batches), the loss per example. Where the
    data plate subsamples, a step's loss is Pyro's estimate for the plate's N examples, so
    it counts for N, not for the batch's."""
    per_epoch = 100 if case.batches is None else len(case.batches)
    steps = case.steps
    sizes = [
        _size(case.batches[s % len(case.batches)]) if case.batches else 1 for s in range(steps)
    ]
    args, kwargs = _step_args(case.batches[0]) if case.batches else ((), {})
    with pyro.poutine.block():
        represented = subsampled_size(pyro.poutine.trace(case.model).get_trace(*args, **kwargs))
    shares = [loss * size / (represented or size) for loss, size in zip(losses, sizes)]
    out = []
    for start in range(0, steps, per_epoch):
        stop = min(start + per_epoch, steps)
        out.append(math.fsum(shares[start:stop]) / sum(sizes[start:stop]))
    return out


def logged_path(caplog: pytest.LogCaptureFixture) -> str:
    """What the log says the step did: COMPILED, or the fallback's reason."""
    lines = [r.getMessage() for r in caplog.records if r.name == "pyro_gen"]
    off = [line for line in lines if "compiled SVI step off" in line or "not supported" in line]
    if off:
        return off[0]
    if not lines:
        return PLAIN_UNSAID
    assert any("recorded the ELBO step" in line for line in lines), lines
    return COMPILED


def assert_trains_as_pyros_svi(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    """Train ``case`` by ``fit`` and by Pyro's SVI: the same parameters, module states and
    losses after every step, and the path the row states."""
    # counts the steps the recorded program took (the others were plain Pyro steps)
    with (
        caplog.at_level(logging.INFO, logger="pyro_gen"),
        mock.patch.object(CompiledSVI, "_run", autospec=True, side_effect=CompiledSVI._run) as run,
    ):
        ours, history = _fit_run(case)
    path = logged_path(caplog)
    our_states = _states(case)
    theirs, losses = _pyro_run(case)
    torch.testing.assert_close(our_states, _states(case), rtol=1e-5, atol=1e-6)
    assert len(ours) == len(theirs) == case.steps
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert a.keys() == b.keys(), (step, sorted(a), sorted(b))
        for name in a:
            torch.testing.assert_close(
                a[name], b[name], rtol=1e-5, atol=1e-6, msg=f"param {name!r} after step {step + 1}"
            )
    reported = [record["train_loss"] for record in history]
    assert reported == pytest.approx(_epoch_losses(case, losses), rel=1e-5, abs=1e-6)
    if case.path == COMPILED:
        assert path == COMPILED, path
        assert run.call_count == case.steps - case.signatures
    else:
        assert path != COMPILED and re.search(case.path, path), path
