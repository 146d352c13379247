"""A ``fit`` started, in the same thread, into the run directory an outer ``fit`` is still
training into (from the outer fit's epoch or step callback, as a user's "fine-tune when the
loss plateaus" callback might): the run lock was re-entrant per thread, so the inner fit got
it, wrote its own checkpoint and metrics there, and the outer one wrote over them again,
leaving a metrics file with two interleaved histories. Now the inner fit is refused before it
writes anything, with one error saying to give it another directory; the outer run's files
are exactly those of a run that never had the callback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyro_gen.infer import fit
from pyro_gen.infer.checkpoint import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    RunLockedError,
    load_checkpoint,
    run_lock,
)
from tests.reliability.identical_state import assert_identical

X = torch.randn(16, 3)  # 4 batches of 4 an epoch
TIMINGS = ("time_s", "examples_per_s", "epoch_time")


def model(x: torch.Tensor) -> None:
    scale = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(0.0, scale).to_event(1), obs=x)


def train(run: Path, **kwargs: Any) -> Any:
    pyro.set_rng_seed(0)
    return fit(model, X, guide=lambda x: None, batch_size=4, progress=False, compile=False,
               clear_params=True, checkpoint_dir=run, **{"epochs": 2, **kwargs})  # fmt: skip


def without_timings(value: Any) -> Any:
    """``value`` with the wall-clock entries (which differ between any two runs) dropped."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def assert_same_run(run: Path, reference: Path) -> None:
    """The checkpoint and the metrics in ``run`` are those in ``reference`` but for times."""
    assert_identical(
        without_timings(load_checkpoint(run / CHECKPOINT_NAME)),
        without_timings(load_checkpoint(reference / CHECKPOINT_NAME)),
    )
    metrics = [(run / METRICS_NAME).read_text(), (reference / METRICS_NAME).read_text()]
    records = [[without_timings(json.loads(line)) for line in m.splitlines()] for m in metrics]
    assert records[0] == records[1]


def test_a_fit_from_an_epoch_callback_into_the_same_directory_is_refused(tmp_path):
    """The callback's fit is refused before writing; the outer run stops with the error, and
    its directory holds exactly a one-epoch run's checkpoint and metrics."""
    run, errors = tmp_path / "run", []

    def fine_tune(record: dict[str, Any], m: Any) -> None:
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        try:
            fit(model, X, guide=lambda x: None, batch_size=4, progress=False, epochs=5,
                checkpoint_dir=run)  # fmt: skip
        except RunLockedError as e:
            errors.append(str(e))
            assert {p.name: p.read_bytes() for p in run.iterdir()} == before
            raise

    with pytest.raises(RunLockedError):
        train(run, callbacks=[fine_tune])
    assert len(errors) == 1
    assert str(run) in errors[0] and "in this thread" in errors[0]
    assert "another directory (checkpoint_dir=, --out)" in errors[0]
    train(tmp_path / "reference", epochs=1)
    assert_same_run(run, tmp_path / "reference")


def test_a_refused_inner_fit_caught_by_the_user_leaves_the_outer_run_whole(tmp_path):
    """A callback that catches the refusal: the outer run trains on and its checkpoint and
    metrics equal those of a run without the callback, bit for bit."""
    run, refusals = tmp_path / "run", []

    def try_fine_tune(step: int, m: Any) -> None:
        if step == 2:
            try:
                fit(
                    model,
                    X,
                    guide=lambda x: None,
                    batch_size=4,
                    progress=False,
                    epochs=1,
                    checkpoint_dir=run / ".",
                )  # the same directory, spelled another way
            except RunLockedError as e:  # fmt: skip
                refusals.append(e)

    train(run, step_callbacks=[try_fine_tune])
    assert len(refusals) == 1
    train(tmp_path / "reference")
    assert_same_run(run, tmp_path / "reference")


def test_a_nested_fit_into_another_directory_and_a_later_resume_still_train(tmp_path):
    """Only the same directory is refused: a callback's fit into its own directory trains
    there, and once the outer fit returns, a fit into its directory resumes it."""
    run, inner = tmp_path / "run", tmp_path / "inner"

    def other_run(record: dict[str, Any], m: Any) -> None:
        if record["epoch"] == 1:
            fit(model, X, guide=lambda x: None, batch_size=4, progress=False, epochs=1,
                checkpoint_dir=inner)  # fmt: skip

    train(run, callbacks=[other_run])
    assert load_checkpoint(inner / CHECKPOINT_NAME)["progress"]["epoch"] == 1
    assert train(run, epochs=3).epoch == 3


def test_a_lock_taken_inside_a_training_fit_is_refused_but_fit_inside_a_lock_trains(tmp_path):
    """The command line takes the lock and then fit takes it again (allowed); a ``run_lock``
    taken while a fit trains there (a user's callback writing into the run) is refused."""
    run = tmp_path / "run"
    with run_lock(run):
        assert train(run, epochs=1).epoch == 1

    def lock_again(step: int, m: Any) -> None:
        with run_lock(run):
            pass

    with pytest.raises(RunLockedError, match="still training into it"):
        train(run, epochs=3, step_callbacks=[lock_again])
    with run_lock(run):  # released when the refused fit returned
        pass
