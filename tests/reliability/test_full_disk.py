"""A disk that fills, or a Ctrl-C, in the middle of a checkpoint or a metrics record of a
user's own Pyro program: the last checkpoint survives whole, no temporary file stays, the
error is one clear line naming the file, and rerunning ``fit`` continues exactly.

Before, a record cut by a full disk stayed in ``metrics.jsonl`` as half a line (which
the command line's epoch count then read as "no records"), and its error named no file
(``[Errno 28] No space left on device``, with nothing to say where).
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch

from pyro_gen.infer import fit
from pyro_gen.infer.checkpoint import load_checkpoint
from tests.reliability.run_fixtures import assert_one_line_error, cli, trained_run

pytestmark = pytest.mark.filterwarnings("ignore::pyro_gen.infer.batch_checks.UnscaledBatchWarning")
resource = pytest.importorskip("resource")  # file size limits: POSIX only

X = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))


def program() -> tuple:
    net = torch.nn.Linear(3, 3)

    def model(x: torch.Tensor) -> None:
        pyro.module("net", net)
        loc = pyro.sample("loc", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(net(loc).expand(x.shape), 1.0).to_event(1), obs=x)

    def guide(x: torch.Tensor) -> None:
        pyro.sample("loc", dist.Normal(pyro.param("q_loc", torch.zeros(3)), 1.0).to_event(1))

    return net, model, guide


def train(run: Path | None, epochs: int, callbacks: list | None = None) -> dict:
    """Trains the program from seed 0 (resuming from ``run``'s checkpoint if there is one);
    returns every trained value."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net, model, guide = program()
    fit(model, X, guide=guide, batch_size=4, epochs=epochs, progress=False, compile=False,
        optim=pyro.optim.Adam({"lr": 0.01}), checkpoint_dir=run,
        callbacks=callbacks or [])  # fmt: skip
    values = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return {**values, **{f"net.{k}": v.clone() for k, v in net.state_dict().items()}}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def epochs_recorded(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def limit_file_size_at_epoch(epoch: int, size: int) -> object:
    """A callback that, after epoch ``epoch``'s record, caps the size of any file this
    process writes at ``size`` bytes (as a full disk would cut a write)."""

    def cap(record: dict, model: object) -> None:
        if record["epoch"] == epoch:
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))

    return cap


@pytest.fixture
def restore_file_size_limit():
    saved = resource.getrlimit(resource.RLIMIT_FSIZE)
    yield
    resource.setrlimit(resource.RLIMIT_FSIZE, saved)


def test_a_disk_filling_mid_checkpoint_keeps_the_last_one(tmp_path, restore_file_size_limit):
    straight = train(tmp_path / "straight", epochs=3)
    run = tmp_path / "run"
    with pytest.raises(OSError) as info:
        train(run, epochs=3, callbacks=[limit_file_size_at_epoch(2, 1000)])
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert info.value.errno == errno.EFBIG and info.value.filename == str(run / "checkpoint.pt")
    assert load_checkpoint(run / "checkpoint.pt")["progress"]["epoch"] == 1  # whole, epoch 1
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "metrics.jsonl"]  # no temporary file
    assert epochs_recorded(run) == [1]
    assert_same(train(run, epochs=3), straight)  # rerun once there is room: exact
    assert epochs_recorded(run) == [1, 2, 3]


def test_a_disk_filling_mid_record_leaves_whole_records(tmp_path, monkeypatch):
    """The checkpoint of epoch 2 is written; its record's append is cut after 17 bytes."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file a write goes to")
    straight = train(tmp_path / "straight", epochs=3)
    run = tmp_path / "run"
    real_write = os.write

    def disk_full_for_the_second_record(fd: int, data: bytes) -> int:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith("metrics.jsonl") and os.fstat(fd).st_size > 0:
            real_write(fd, data[:17])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full_for_the_second_record)
    with pytest.raises(OSError) as info:
        train(run, epochs=3)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(run / "metrics.jsonl")
    assert epochs_recorded(run) == [1]  # every line a whole record
    assert load_checkpoint(run / "checkpoint.pt")["progress"]["epoch"] == 2
    assert_same(train(run, epochs=3), straight)
    assert epochs_recorded(run) == [1, 2, 3]


def test_an_interrupt_mid_checkpoint_keeps_the_last_one(tmp_path, monkeypatch):
    """Ctrl-C while the second checkpoint is being flushed to disk."""
    straight = train(tmp_path / "straight", epochs=3)
    run = tmp_path / "run"
    real_fsync, synced = os.fsync, []

    def interrupted_fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".checkpoint.pt."):
            synced.append(fd)
            if len(synced) == 2:
                raise KeyboardInterrupt
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is synced")
    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        train(run, epochs=3)
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoint.pt")["progress"]["epoch"] == 1
    # no temporary file, and the lock file the interrupted run made went with it
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "metrics.jsonl"]
    assert_same(train(run, epochs=3), straight)


def test_the_command_line_says_a_full_disk_in_one_line(tmp_path, capsys, monkeypatch):
    """``pyro-gen train`` resuming a run for a second epoch on a disk that is full when the
    checkpoint is flushed: one line naming the checkpoint, the first epoch's kept."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is synced")
    run = trained_run(tmp_path)
    before = (run / "checkpoint.pt").read_bytes()
    real_fsync = os.fsync

    def full(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".checkpoint.pt."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    status, _, err = cli(capsys, "train", "vae", "--data", "digits", "--epochs", "2",
                         "--no-progress", "--out", run)  # fmt: skip
    monkeypatch.undo()
    assert_one_line_error(status, err, "No space left on device", str(run / "checkpoint.pt"),
                          "free some space")  # fmt: skip
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]


def test_the_command_line_says_a_file_size_limit_in_one_line(
    tmp_path, capsys, restore_file_size_limit
):
    """``ulimit -f`` (or a quota) below the checkpoint's size: the write is cut, and the line
    says so instead of 'check that path'."""
    run = trained_run(tmp_path)
    before = (run / "checkpoint.pt").read_bytes()
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, resource.RLIM_INFINITY))
    status, _, err = cli(capsys, "train", "vae", "--data", "digits", "--epochs", "2",
                         "--no-progress", "--out", run)  # fmt: skip
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert_one_line_error(status, err, "File too large", str(run / "checkpoint.pt"), "ulimit -f")
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]


def test_ctrl_c_between_two_short_writes_of_a_record_leaves_whole_records(tmp_path, monkeypatch):
    """A record's append that the kernel took in part (a short write, as on a filling disk)
    and then Ctrl-C before the rest: the part is taken back."""
    from pyro_gen.infer.checkpoint import append_metrics

    path = tmp_path / "metrics.jsonl"
    append_metrics(path, {"epoch": 1, "train_loss": 0.5})
    real_write, calls = os.write, []

    def short_then_interrupted(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[:5])  # a short write
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", short_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        append_metrics(path, {"epoch": 2, "train_loss": 0.25})
    monkeypatch.undo()
    assert len(calls) == 2  # the record was being written in two parts when interrupted
    assert epochs_recorded(path.parent) == [1]


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, *sys.argv[1:]])
