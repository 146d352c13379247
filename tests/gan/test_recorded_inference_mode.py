"""An adversarial loss evaluated under ``torch.inference_mode()`` (Lightning's ``validate`` and
``test``) runs the model through Pyro and leaves the recordings alone: make_fx cannot
record under inference mode ("get value out of a tracing tensor ... _local_scalar_dense"),
and the failed recording used to turn the recorded run off for all later training."""

from __future__ import annotations

import logging

import pyro
import pytest
import torch
from pyro.infer import SVI

from pyro_gen.gan import Generator, NonSaturatingGAN
from pyro_gen.nn import MLPDiscriminator, MLPGenerator


def _values(loss: NonSaturatingGAN, gen: Generator, x: torch.Tensor, grad_mode) -> list[float]:  # noqa: ANN001
    out = []
    for seed in range(3):
        pyro.set_rng_seed(seed)
        with grad_mode():
            out.append(loss.loss(gen.model, gen.guide, x))
    return out


@pytest.mark.parametrize("recorded_first", [False, True])
def test_inference_mode_evaluates_through_pyro_and_training_keeps_the_recording(
    recorded_first: bool, caplog: pytest.LogCaptureFixture
) -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    gen = Generator(MLPGenerator(2, (2,), (8,)))
    disc = MLPDiscriminator((2,), (8,))
    loss, plain = NonSaturatingGAN(disc), NonSaturatingGAN(disc, record=False)
    svi = SVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 1e-2}), loss)
    x = torch.randn(16, 2)
    for _ in range(5 if recorded_first else 0):  # a recording replayed in training
        svi.step(x)

    def state():  # noqa: ANN202
        runs = loss.runs
        calls = [p.calls for p in runs._programs.values()]
        return dict(runs._programs), dict(runs._sightings), runs._calls, calls

    before = state()
    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        inference = _values(loss, gen, x, torch.inference_mode)
    # the Pyro run's values, with the recorder as it was: nothing seen, nothing logged
    assert state() == before
    assert not caplog.records and loss.runs.fallback_reason is None
    assert inference == _values(plain, gen, x, torch.no_grad)
    assert inference == _values(loss, gen, x, torch.no_grad)  # recorded (or recording)
    for _ in range(6):
        svi.step(x)
    assert loss.runs.recorded, loss.runs.fallback_reason
    assert max(p.calls for p in loss.runs._programs.values()) > loss.runs.check_steps  # replays
