"""The run directory a user passes to ``fit`` as ``checkpoint_dir``: what is refused before
the first step, with one error naming the path, rather than after the training up to the
first checkpoint (or never): a link planted where the checkpoint, the metrics or the lock
file go, a directory where the checkpoint goes, a ``checkpoint_dir`` that is a file or lies
under one, a second thread of the process training into a directory one thread holds, an
empty ``checkpoint_dir`` or one of another type, and a restore (``steps=0``) from a
directory without a checkpoint.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyro_gen.infer import fit
from pyro_gen.infer.checkpoint import LOCK_NAME, CheckpointError, RunLockedError
from pyro_gen.infer.files import UnsafePathError

X = torch.randn(16, 3)  # 4 batches of 4 an epoch


def model(x: torch.Tensor) -> None:
    scale = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(0.0, scale).to_event(1), obs=x)


def train(run: Path, steps: list[int] | None = None, **kwargs: Any) -> None:
    record = [] if steps is None else steps
    fit(model, X, guide=lambda x: None, batch_size=4, progress=False, compile=False,
        checkpoint_dir=run, step_callbacks=[lambda step, m: record.append(step)],
        **{"epochs": 2, **kwargs})  # fmt: skip


def snapshot(directory: Path) -> dict[str, bytes | str]:
    """Every entry under ``directory``: a file's bytes, a link's target."""
    return {
        str(p.relative_to(directory)): os.readlink(p) if p.is_symlink() else p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_symlink() or p.is_file()
    }


@pytest.mark.parametrize("name", ["checkpoint.pt", "metrics.jsonl"])
def test_a_planted_link_is_refused_before_training(tmp_path, name):
    """A link at checkpoint.pt was read through (the run resumed from a file outside its
    directory) and refused when first written, after an epoch's steps; a dangling one at
    metrics.jsonl was refused after the first epoch too. Now neither is followed, and
    nothing trains."""
    pyro.clear_param_store()
    train(tmp_path / "elsewhere", epochs=1)
    run = tmp_path / "run"
    run.mkdir()
    target = tmp_path / "elsewhere" / name if name == "checkpoint.pt" else tmp_path / "new.jsonl"
    (run / name).symlink_to(target)
    before, steps = snapshot(tmp_path), []
    pyro.clear_param_store()
    with pytest.raises(UnsafePathError, match=rf"{name} is a symlink .*does not write through"):
        train(run, steps, epochs=3)
    assert steps == []
    assert snapshot(tmp_path) == before  # the refused run took its lock file away too
    assert not (tmp_path / "new.jsonl").exists()


def test_a_directory_where_the_checkpoint_goes_is_named_as_such(tmp_path):
    # it was "no checkpoint at .../checkpoint.pt: train first", as if nothing were there
    (tmp_path / "checkpoint.pt").mkdir()
    with pytest.raises(UnsafePathError, match=r"checkpoint.pt exists and is not a regular file"):
        train(tmp_path)


def test_a_planted_link_at_the_lock_file_is_refused_by_name(tmp_path):
    # it was "[Errno 40] Too many levels of symbolic links"
    (tmp_path / LOCK_NAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match=rf"{LOCK_NAME} is a symlink"):
        train(tmp_path)
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("where", ["is", "under"])
def test_a_checkpoint_dir_that_is_a_file_names_the_argument(tmp_path, where):
    # it was "[Errno 17] File exists" (or "[Errno 20] Not a directory")
    (tmp_path / "file").write_text("the user's notes")
    run = tmp_path / "file" if where == "is" else tmp_path / "file" / "run"
    expected = "is a file" if where == "is" else f"is under {tmp_path / 'file'}, which is a file"
    with pytest.raises(NotADirectoryError, match=rf"^checkpoint_dir='{run}' {expected}"):
        train(run)
    assert (tmp_path / "file").read_text() == "the user's notes"


def test_a_second_thread_cannot_train_into_a_directory_one_thread_holds(tmp_path):
    """The lock file's flock is the process's: a second thread's fit into the same
    directory took it too, and both wrote one checkpoint and one metrics file in turn."""
    inside, release, outcome = threading.Event(), threading.Event(), {}

    def hold(step: int, m: Any) -> None:
        if step == 1:
            inside.set()
            release.wait(30)

    def first() -> None:
        try:
            fit(model, X, guide=lambda x: None, batch_size=4, epochs=1, progress=False,
                compile=False, checkpoint_dir=tmp_path, step_callbacks=[hold])  # fmt: skip
            outcome["first"] = "finished"
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            outcome["first"] = repr(e)

    pyro.clear_param_store()
    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert inside.wait(30)
        steps: list[int] = []
        with pytest.raises(RunLockedError, match="in use by another thread of this process"):
            train(tmp_path, steps)
        assert steps == []
    finally:
        release.set()
        thread.join(30)
    assert outcome == {"first": "finished"}
    train(tmp_path, epochs=2)  # free again once the first is done: resumes its epoch


# checkpoint_dir as a user's program passes it: os.environ.get("CKPT", "") gives "" when the
# variable is unset, meaning "no checkpoint"; Path("") is the current directory, so fit wrote
# checkpoint.pt, metrics.jsonl and its lock file among the user's files wherever the program
# ran. A value of another type (False to switch checkpoints off) failed inside pathlib naming
# no argument. Both are refused before anything is written or trained, naming checkpoint_dir
# and what to pass.
def test_an_empty_checkpoint_dir_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"checkpoint_dir='' names the current directory; pass "
                       r"None to keep nothing on disk, or '\.'"):  # fmt: skip
        train("", epochs=1, clear_params=True)
    assert list(tmp_path.iterdir()) == []
    assert "scale" not in pyro.get_param_store()  # refused before the model ran


@pytest.mark.parametrize("value", [False, 0, b"run"])
def test_a_checkpoint_dir_of_another_type_names_the_argument(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=f"checkpoint_dir must be a directory path .* got "
                       f"{type(value).__name__} {value!r}"):  # fmt: skip
        train(value, epochs=1, clear_params=True)
    assert list(tmp_path.iterdir()) == []


def test_dot_and_none_still_mean_the_current_directory_and_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(None, epochs=1, clear_params=True)
    assert list(tmp_path.iterdir()) == []
    train(".", epochs=1, clear_params=True)
    assert {"checkpoint.pt", "metrics.jsonl"} <= {p.name for p in tmp_path.iterdir()}


def test_restoring_with_steps_0_from_a_directory_without_a_checkpoint_is_refused(tmp_path):
    """``fit(..., checkpoint_dir=run, steps=0)`` is how a user restores a trained run to
    evaluate it (``pyro_gen.load`` says so for fit's directories): with the directory
    mistyped it created an empty one, restored nothing and returned, and the untrained
    model was evaluated as the trained one. Refused now, creating nothing; the right
    directory restores the trained values exactly."""
    run = tmp_path / "run"
    train(run, epochs=1, clear_params=True)
    trained = pyro.param("scale").detach().clone()
    pyro.clear_param_store()
    with pytest.raises(CheckpointError, match=r"fit\(steps=0\) restores .*/run-typo has no "
                       r"checkpoint.pt: point at the run's directory"):  # fmt: skip
        fit(model, X, guide=lambda x: None, batch_size=4, steps=0, progress=False,
            checkpoint_dir=tmp_path / "run-typo")  # fmt: skip
    assert not (tmp_path / "run-typo").exists()
    assert "scale" not in pyro.get_param_store()
    fit(model, X, guide=lambda x: None, batch_size=4, steps=0, progress=False,
        checkpoint_dir=run)  # fmt: skip
    assert torch.equal(pyro.param("scale").detach(), trained)


def test_epochs_0_into_a_fresh_directory_still_sets_up_the_run(tmp_path):
    """``epochs=0`` (the command line's ``--epochs 0``, which records a run's settings) is
    not a restore: it is taken with no checkpoint, as before."""
    result = fit(model, X, guide=lambda x: None, batch_size=4, epochs=0, progress=False,
                 checkpoint_dir=tmp_path / "fresh")  # fmt: skip
    assert result.epoch == 0 and (tmp_path / "fresh").is_dir()
