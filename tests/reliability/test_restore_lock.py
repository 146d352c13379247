"""``fit(steps=0, checkpoint_dir=D)`` restores a run and writes nothing, so it reads a
read-only run, and it still refuses a run that another process is training into.

Before, restoring took the training lock, whose file it creates and writes, so a
restore from a read-only run directory (a run copied read-only, a shared results folder)
failed with ``PermissionError`` on ``.pyro-gen.lock``. Now a restore holds a shared lock
on the lock file, opened read-only (or none, where no run ever left one), which a
trainer's exclusive lock excludes both ways.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.infer import fit
from pyro_gen.infer.checkpoint import RunLockedError
from pyro_gen.infer.run_lock import LOCK_NAME, run_lock, run_read_lock
from tests.reliability.unprivileged import DRIVER_PAIR, REPO, run_unprivileged

# A user's own Pyro pair, trained once, then restored from a run made read-only.
_DRIVER = (
    DRIVER_PAIR
    + r"""
def restore(run):
    pyro.clear_param_store()
    try:
        fit(model, X, guide=guide, batch_size=4, steps=0, progress=False, compile=False,
            checkpoint_dir=run)
    except OSError as e:
        return {"error": str(e)}
    saved = load_checkpoint(run / "checkpoint.pt")["param_store"]["params"]["q_loc"]
    return {"error": None, "restored": pyro.param("q_loc").tolist() == saved.tolist()}

root = Path(sys.argv[1])
out = {}
for case in ("with lock file", "without lock file"):
    run = root / case.replace(" ", "_")
    pyro.clear_param_store()
    fit(model, X, guide=guide, batch_size=4, epochs=1, progress=False, compile=False,
        checkpoint_dir=run)
    if case == "without lock file":  # a run copied without its lock file
        (run / ".pyro-gen.lock").unlink()
    for p in run.iterdir():
        p.chmod(0o444)
    run.chmod(0o555)
    kept = {p.name: p.read_bytes() for p in run.iterdir()}
    out[case] = restore(run)
    out[case]["unchanged"] = {p.name: p.read_bytes() for p in run.iterdir()} == kept
print(json.dumps(out))
"""
)


@pytest.fixture(scope="module")
def read_only(tmp_path_factory) -> dict:
    return run_unprivileged(_DRIVER, tmp_path_factory.mktemp("read_only_restore"))


@pytest.mark.parametrize("case", ["with lock file", "without lock file"])
def test_a_read_only_run_is_restored_and_left_as_it_was(read_only, case):
    result = read_only[case]
    assert result["error"] is None, result["error"]
    assert result["restored"] and result["unchanged"]


def _model(x):
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def _guide(x):
    pyro.sample("loc", dist.Normal(pyro.param("q_loc", torch.zeros(2)), 1.0).to_event(1))


def _fit(run: Path, **length) -> None:
    fit(_model, torch.randn(8, 2), guide=_guide, batch_size=8, progress=False, compile=False,
        checkpoint_dir=run, **length)  # fmt: skip


# Another process that holds a run directory's lock as a training run does, until stdin closes.
_HOLDER = r"""
import sys
from pyro_gen.infer.run_lock import run_lock
with run_lock(sys.argv[1], training=True):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_restore_is_refused_while_another_process_trains_there(tmp_path):
    run = tmp_path / "run"
    pyro.clear_param_store()
    _fit(run, epochs=1)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"another process \\(pid {holder.pid}\\)"):
            _fit(run, steps=0)
    finally:
        holder.communicate(timeout=60)
    _fit(run, steps=0)  # once it has finished, the restore goes ahead


def test_a_run_cannot_start_training_while_it_is_being_restored(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text("")
    with run_read_lock(run), run_read_lock(run):  # two readers share the directory
        proc = subprocess.run(
            [sys.executable, "-c", _HOLDER, str(run)],
            cwd=REPO, input="", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode != 0 and "RunLockedError" in proc.stderr
        # no pid in the lock file (no run trained there): the refusal cannot name one
        assert "another process (pid unknown)" in proc.stderr, proc.stderr
    (run / LOCK_NAME).write_text("2147483647\n")  # a trainer that has exited since
    with run_read_lock(run):
        proc = subprocess.run(
            [sys.executable, "-c", _HOLDER, str(run)],
            cwd=REPO, input="", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "one restoring from it, fit(steps=0)" in proc.stderr, proc.stderr
    with run_lock(run, training=True):  # and once the reads are over, it can
        pass


def test_a_restore_from_inside_a_fit_training_there_is_refused(tmp_path):
    run = tmp_path / "run"
    errors = []

    def restore_from_callback(record, model):
        if record["epoch"] < 2:  # epoch 1's checkpoint is written after its callbacks
            return
        try:
            _fit(run, steps=0)
        except RunLockedError as e:
            errors.append(str(e))

    pyro.clear_param_store()
    fit(_model, torch.randn(8, 2), guide=_guide, batch_size=8, epochs=2, progress=False,
        compile=False, checkpoint_dir=run, callbacks=[restore_from_callback])  # fmt: skip
    assert len(errors) == 1 and "in this thread" in errors[0], errors
