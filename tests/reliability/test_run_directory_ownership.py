"""A run directory is left as it was found by a refused run, and a user's own files in it
are never emptied.

Two defects a user met with their own Pyro programs:

* ``fit(checkpoint_dir=D)`` with ``D`` holding a ``metrics.jsonl`` but no checkpoint emptied
  that file. Right for the records of a run whose checkpoint is gone (appending would
  interleave two histories), wrong for a file of the user's own under that name (their
  notes, another tool's log), which was wiped. Now only records that ``fit`` writes are
  emptied; any other file is refused in one line, byte for byte as it was.
* A refused ``fit`` or ``pyro-gen train`` into an existing folder left ``.pyro-gen.lock``
  behind (and one into a missing path left the folders it had made).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch

import pyro_gen.infer.run_lock as run_lock_module
from pyro_gen.infer import CheckpointError, fit
from pyro_gen.infer.checkpoint import LOCK_NAME, run_lock
from tests.reliability.run_fixtures import TRAIN_VAE, assert_one_line_error, cli
from tests.reliability.test_user_programs_refusals import AtLeastThree

# the data plates here have the batch's size (the posterior is not the point)
pytestmark = pytest.mark.filterwarnings("ignore::pyro_gen.infer.batch_checks.UnscaledBatchWarning")

X = torch.randn(16, 3)


def model(x: torch.Tensor) -> None:
    loc = pyro.sample("loc", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def guide(x: torch.Tensor, name: str = "q_loc") -> None:
    pyro.sample("loc", dist.Normal(pyro.param(name, torch.zeros(3)), 1.0).to_event(1))


def other_guide(x: torch.Tensor) -> None:
    guide(x, "renamed_loc")


def train(run: Path, epochs: int = 1, guide=guide) -> None:  # noqa: ANN001
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    fit(model, X, guide=guide, batch_size=4, epochs=epochs, optim=pyro.optim.Adam({"lr": 0.01}),
        progress=False, compile=False, checkpoint_dir=run)  # fmt: skip


def listing(directory: Path) -> dict[str, bytes]:
    """Every entry under ``directory`` (hidden ones, the lock file, included) with its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(directory.rglob("*"))
    }


USERS_OWN = {
    "notes": b"loss went down after I lowered the lr\n",
    "another_tools_log": b'{"step": 1, "loss": 0.3}\n{"step": 2, "loss": 0.2}\n',
    "epoch_as_text": b'{"epoch": "1", "train_loss": 0.5}\n',
    "binary": bytes(range(256)),
    "torn_line_inside": b'{"epoch": 1, "train_lo\n{"epoch": 2, "train_loss": 0.5}\n',
}


@pytest.mark.parametrize("content", USERS_OWN.values(), ids=USERS_OWN.keys())
def test_a_users_own_metrics_file_is_refused_and_kept(tmp_path, content):
    (tmp_path / "metrics.jsonl").write_bytes(content)
    before = listing(tmp_path)
    with pytest.raises(CheckpointError) as info:
        train(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "metrics.jsonl is not a metrics file that fit wrote" in message, message
    assert "nothing was trained or written" in message, message
    assert listing(tmp_path) == before  # the file, and no lock file or checkpoint added


def test_fits_own_records_of_a_run_without_checkpoint_are_replaced(tmp_path):
    """The records of a run whose checkpoint was deleted (to start over), the last one cut
    short by a kill while it was appended: a fresh run starts the history anew."""
    train(tmp_path, epochs=2)
    (tmp_path / "checkpoint.pt").unlink()
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-30])  # the second record, torn
    train(tmp_path, epochs=1)
    assert [json.loads(r)["epoch"] for r in metrics.read_text().splitlines()] == [1]


def test_a_refused_resume_leaves_the_folder_as_found(tmp_path):
    """A run's directory whose lock file the user removed (or copied without it): a resume
    with a changed guide is refused, and no lock file is left in its place."""
    train(tmp_path)
    (tmp_path / LOCK_NAME).unlink()
    before = listing(tmp_path)
    with pytest.raises(CheckpointError, match="changed since"):
        train(tmp_path, epochs=2, guide=other_guide)
    assert listing(tmp_path) == before


def test_a_refused_run_keeps_a_lock_file_that_was_there(tmp_path):
    train(tmp_path)
    before = listing(tmp_path)
    with pytest.raises(CheckpointError, match="changed since"):
        train(tmp_path, epochs=2, guide=other_guide)
    assert listing(tmp_path) == before and LOCK_NAME in before


def test_a_refused_run_into_a_missing_path_creates_no_folder(tmp_path):
    """A param no checkpoint can record is refused before training (after the directory is
    taken); the folders made for it go again, and a folder that was there stays."""

    def constrained(x: torch.Tensor) -> None:
        shift = pyro.param("shift", torch.full((3,), 4.0), constraint=AtLeastThree())
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(shift - 4.0, 1.0).to_event(1), obs=x)

    (tmp_path / "kept").mkdir()
    pyro.clear_param_store()
    with pytest.raises(CheckpointError, match="Nothing was trained"):
        fit(constrained, X, guide=lambda x: None, batch_size=4, epochs=1, progress=False,
            compile=False, checkpoint_dir=tmp_path / "kept" / "a" / "b")  # fmt: skip
    assert listing(tmp_path) == {"kept": b"<dir>"}


def test_a_refused_command_line_run_leaves_the_users_folder_as_found(tmp_path, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("kept")
    (folder / "samples.png").write_bytes(b"the user's own picture")
    before = listing(folder)
    status, _, err = cli(capsys, *TRAIN_VAE, "--out", folder)
    assert_one_line_error(status, err, "has samples.png but no config.json")
    assert listing(folder) == before


def test_a_lock_file_removed_while_being_taken_is_not_shared(tmp_path, monkeypatch):
    """A refused holder removes its lock file while still holding it; a process that had
    opened that file meanwhile gets its lock only once the file is gone. It must then take
    the file now named (which another may hold), not keep a lock no one else can see."""
    real_try_lock = run_lock_module.try_lock
    removed = []

    def removed_before_locking(fd: int) -> bool:
        if not removed:  # the old holder goes, taking its file along
            removed.append(True)
            os.unlink(tmp_path / LOCK_NAME)
        return real_try_lock(fd)

    (tmp_path / LOCK_NAME).write_text("12345\n")  # the old holder's file, opened first
    monkeypatch.setattr(run_lock_module, "try_lock", removed_before_locking)
    with run_lock(tmp_path):
        # the file now named is the one held: another opening of it (as another process
        # opens it; flock locks belong to the open file) cannot lock it
        fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR)
        try:
            assert not real_try_lock(fd)
        finally:
            os.close(fd)
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert removed == [True]
