"""``fit``'s ``checkpoint_dir`` as a user's program passes it: ``os.environ.get("CKPT", "")``
gives ``""`` when the variable is unset, meaning "no checkpoint"; ``Path("")`` is the current
directory, so ``fit`` wrote ``checkpoint.pt``, ``metrics.jsonl`` and its lock file among the
user's files wherever the program ran. A value of another type (``False`` to switch
checkpoints off) failed inside ``pathlib`` naming no argument. Both are refused before
anything is written or trained, naming ``checkpoint_dir`` and what to pass.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyro_gen.infer import fit
from pyro_gen.infer.checkpoint import CheckpointError

X = torch.randn(16, 3)


def model(x: torch.Tensor) -> None:
    scale = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(0.0, scale).to_event(1), obs=x)


def train(checkpoint_dir: Any) -> None:
    fit(model, X, guide=lambda x: None, batch_size=4, epochs=1, progress=False, compile=False,
        clear_params=True, checkpoint_dir=checkpoint_dir)  # fmt: skip


def test_an_empty_checkpoint_dir_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"checkpoint_dir='' names the current directory; pass "
                       r"None to keep nothing on disk, or '\.'"):  # fmt: skip
        train("")
    assert list(tmp_path.iterdir()) == []
    assert "scale" not in pyro.get_param_store()  # refused before the model ran


@pytest.mark.parametrize("value", [False, 0, b"run"])
def test_a_checkpoint_dir_of_another_type_names_the_argument(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=f"checkpoint_dir must be a directory path .* got "
                       f"{type(value).__name__} {value!r}"):  # fmt: skip
        train(value)
    assert list(tmp_path.iterdir()) == []


def test_dot_and_none_still_mean_the_current_directory_and_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(None)
    assert list(tmp_path.iterdir()) == []
    train(".")
    assert {"checkpoint.pt", "metrics.jsonl"} <= {p.name for p in tmp_path.iterdir()}


def test_restoring_with_steps_0_from_a_directory_without_a_checkpoint_is_refused(tmp_path):
    """``fit(..., checkpoint_dir=run, steps=0)`` is how a user restores a trained run to
    evaluate it (``pyro_gen.load`` says so for fit's directories): with the directory
    mistyped it created an empty one, restored nothing and returned, and the untrained
    model was evaluated as the trained one. Refused now, creating nothing; the right
    directory restores the trained values exactly."""
    run = tmp_path / "run"
    train(run)
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
