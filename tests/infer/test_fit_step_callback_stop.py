"""A step callback returning True stops ``fit`` after that step, as ``steps=`` does: a
checkpoint of that step (the command line's SIGTERM stops so), no evaluation of the partial
epoch, and a later ``fit`` resumes from it exactly."""

from __future__ import annotations

import json

import pyro
import pytest
import torch

from pyro_gen.infer import changes_only_tensors, fit
from tests.infer.test_fit_resume import _assert_same, _run
from tests.infer.tiny_vae import TinyVAE, binary_data


def _stop_at(step: int):
    return changes_only_tensors(lambda now, model: now == step)


@pytest.mark.parametrize("compile", [None, False])
@pytest.mark.parametrize("stop", [8, 12])  # inside the second epoch; at its last batch
def test_a_stop_asked_by_a_step_callback_resumes_exactly(tmp_path, compile, stop):
    held_out = binary_data()[:32]
    straight = _run(tmp_path / "a", epochs=3, compile=compile, eval_data=held_out)
    stopped = _run(
        tmp_path / "b",
        epochs=3,
        compile=compile,
        eval_data=held_out,
        step_callbacks=[_stop_at(stop)],
    )
    records = [json.loads(r) for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == stop  # stopped there, and its checkpoint says so
    if stop == 8:  # a partial epoch: recorded as such, not evaluated
        assert records[-1].get("partial") is True and "test_elbo" not in records[-1]
    else:  # the epoch's end: a whole epoch, evaluated as the uninterrupted run does
        assert "partial" not in records[-1] and "test_elbo" in records[-1]
    pairs = zip(straight.state_dict().values(), stopped.state_dict().values(), strict=True)
    assert not all(torch.equal(x, y) for x, y in pairs)  # it did stop short
    resumed = _run(tmp_path / "b", seed=11, epochs=3, compile=compile, eval_data=held_out)
    _assert_same(straight, resumed)
    whole = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    final = [json.loads(r) for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    complete = [r for r in final if not r.get("partial")]
    assert [(r["epoch"], r["test_elbo"]) for r in complete] == [
        (r["epoch"], r["test_elbo"]) for r in whole
    ]


def test_every_step_callback_runs_before_the_stop():
    seen = []
    pyro.set_rng_seed(0)
    fit(
        TinyVAE(),
        binary_data(),
        batch_size=16,
        epochs=2,
        progress=False,
        clear_params=True,
        step_callbacks=[_stop_at(3), changes_only_tensors(lambda step, m: seen.append(step))],
    )
    assert seen == [1, 2, 3]


def test_a_truthy_value_that_is_not_true_does_not_stop():
    steps = []
    pyro.set_rng_seed(0)
    result = fit(
        TinyVAE(),
        binary_data(),
        batch_size=16,
        epochs=1,
        progress=False,
        clear_params=True,
        step_callbacks=[changes_only_tensors(lambda step, m: steps.append(step) or 1)],
    )
    assert result.step == 6 and steps == [1, 2, 3, 4, 5, 6]
