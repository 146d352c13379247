"""A recorded step holds what the model reads besides its parameters and inputs as constants
(a Python number such as an observation noise that a callback anneals). CompiledSVI compares
the program's loss with Pyro's on the same draws after each recording, every
``check_every`` steps and when ``verify_next()`` asks: a stale program is recorded again
once, and a value that keeps changing sends the step back to plain Pyro SVI. The update of
a step found stale is Pyro's own."""

from __future__ import annotations

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_gen.infer.compiled import CompiledSVI

SETTINGS = {"noise": 1.0}


def model(x):
    w = pyro.sample("w", dist.Normal(0.0, 10.0))
    with pyro.plate("N", x.shape[0]):
        pyro.sample("y", dist.Normal(w, SETTINGS["noise"]), obs=x)


@pytest.fixture
def setup():
    pyro.clear_param_store()
    SETTINGS["noise"] = 1.0
    pyro.set_rng_seed(0)
    guide = AutoNormal(model)
    x = torch.randn(32) + 3.0
    return guide, x


def pyro_loss(guide, x) -> float:
    """Trace_ELBO's loss on the draws the next step will take (the RNG is put back)."""
    with torch.random.fork_rng():
        return Trace_ELBO().loss(model, guide, x)


def test_a_changed_number_is_seen_at_the_next_verified_step_and_recorded_again(setup):
    guide, x = setup
    svi = CompiledSVI(model, guide, pyro.optim.Adam({"lr": 0.05}), backend="fx")
    for _ in range(6):
        svi.step(x)
    assert svi.compiled
    SETTINGS["noise"] = 0.2  # the recording holds 1.0
    svi.verify_next()
    expected = pyro_loss(guide, x)
    assert float(svi.step(x)) == pytest.approx(expected, rel=1e-5)
    # Recorded again with the new value: compiled, and its losses are Pyro's.
    for _ in range(3):
        expected = pyro_loss(guide, x)
        assert float(svi.step(x)) == pytest.approx(expected, rel=1e-4)
    assert svi.compiled
    # Without the check the stale program's loss would be the old noise's: far off.
    SETTINGS["noise"] = 1.0
    assert pyro_loss(guide, x) < expected / 5


def test_a_number_that_keeps_changing_falls_back_to_plain_svi(setup):
    guide, x = setup
    svi = CompiledSVI(model, guide, pyro.optim.Adam({"lr": 0.05}), backend="fx")
    for i in range(12):
        if i in (5, 9):
            SETTINGS["noise"] *= 0.5
            svi.verify_next()
        svi.step(x)
    assert not svi.compiled
    assert "keeps changing" in svi.fallback_reason
    assert "tensor argument" in svi.fallback_reason


def test_the_periodic_check_finds_a_stale_program_without_being_asked(setup):
    guide, x = setup
    svi = CompiledSVI(model, guide, pyro.optim.Adam({"lr": 0.05}), backend="fx", check_every=4)
    for _ in range(5):  # plain, recording, two checked steps, the 4th call checked too
        svi.step(x)
    SETTINGS["noise"] = 0.3
    losses = []
    for _ in range(5):
        losses.append((pyro_loss(guide, x), float(svi.step(x))))
    # The program's 5th to 7th calls hold the old noise; the 8th is checked and runs as a
    # plain step, and the next is a new recording.
    matched = [abs(a - b) <= 1e-4 * abs(a) for a, b in losses]
    assert matched == [False, False, False, True, True]
    assert svi.compiled


def test_fit_checks_the_recording_after_the_epochs_callbacks():
    """An epoch callback that anneals a number the model reads: fit's compiled run trains as
    its plain run does (before, the recording kept the first value: train losses 4.7, 3.9,
    ... against 335, 257, ...)."""
    from pyro_gen.infer import fit

    x = torch.randn(64) + 3.0

    def anneal(record, _model):
        SETTINGS["noise"] = 0.1

    histories = []
    for compile in (False, None):
        pyro.clear_param_store()
        SETTINGS["noise"] = 1.0
        pyro.set_rng_seed(0)
        guide = AutoNormal(model)
        optim = pyro.optim.Adam({"lr": 0.05})
        result = fit(model, x, guide=guide, epochs=4, batch_size=8, compile=compile,
                     callbacks=[anneal], optim=optim, progress=False)  # fmt: skip
        histories.append([r["train_loss"] for r in result.history])
    assert histories[1] == pytest.approx(histories[0], rel=1e-4)
    assert histories[0][1] > 20 * histories[0][0]  # the annealed noise shows in the loss


def test_fit_checks_after_unmarked_step_callbacks_only(setup, monkeypatch, caplog):
    """A step callback may change a value the model reads, so fit checks the recording after
    each step that ran one, unless every step callback is marked as changing only tensors
    (an exponential moving average, a buffer the model reads): those cost no check."""
    from pyro_gen.infer import fit
    from pyro_gen.infer.callbacks import changes_only_tensors

    guide, x = setup
    runs = []
    eager_run = CompiledSVI._eager_run

    def counted(self, *args, **kwargs):
        runs.append(1)
        return eager_run(self, *args, **kwargs)

    monkeypatch.setattr(CompiledSVI, "_eager_run", counted)

    def noop(step, model):
        pass

    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        fit(model, x, guide=guide, steps=20, batch_size=32, progress=False, step_callbacks=[noop])
    assert "changes_only_tensors (unmarked: noop)" in caplog.text  # says what it costs
    unmarked = len(runs)
    runs.clear()
    fit(model, x, guide=guide, steps=20, batch_size=32, progress=False,
        step_callbacks=[changes_only_tensors(noop)])  # fmt: skip
    assert unmarked >= 18 > len(runs)
