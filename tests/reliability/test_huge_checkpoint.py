"""A ``checkpoint.pt`` that is huge, or of another kind (gigabytes of zeros, a disk image
copied under the name), was read whole into memory before its first bytes were looked at:
``fit``'s resume, ``load_checkpoint``, ``verify_checkpoint``, the command line and
``convert-checkpoint`` each read every byte (and a file bigger than memory killed the
process) only to refuse it as "not a pyro_gen checkpoint" or "padded". Now the header is
checked against the first bytes and the file's size before the rest is read, and the
refusal names the file and says what to do. The files here are sparse (``os.truncate``),
so they take no disk; how many bytes the process read is taken from ``/proc/self/io``.
Also: ``convert-checkpoint --trust-pickle`` refuses a link planted at checkpoint.pt before
unpickling what it points at.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyro_gen.infer import fit
from pyro_gen.infer.checkpoint import (
    CHECKPOINT_NAME,
    MAGIC,
    METRICS_NAME,
    CheckpointError,
    load_checkpoint,
    read_checkpoint_bytes,
    verify_checkpoint,
)
from pyro_gen.infer.legacy_checkpoint import convert_legacy_checkpoint
from tests.reliability.run_fixtures import assert_one_line_error, cli, trained_run

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/io").exists(), reason="counts the bytes read in /proc/self/io"
)

HUGE = 256 * 2**20  # bytes: enough that reading it shows, small enough to survive doing so
X = torch.randn(16, 3)


def bytes_read() -> int:
    """Bytes this process has read so far (read(2) calls of every kind)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """``path`` holding ``head`` and then zeros up to ``size`` bytes, without the disk."""
    path.write_bytes(head)
    os.truncate(path, size)
    return path


def model(x: torch.Tensor) -> None:
    scale = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(0.0, scale).to_event(1), obs=x)


def train(run: Path, epochs: int = 1) -> None:
    fit(model, X, guide=lambda x: None, batch_size=4, epochs=epochs, progress=False,
        compile=False, clear_params=True, checkpoint_dir=run)  # fmt: skip


def refused(call, *expected: str) -> str:  # type: ignore[no-untyped-def]
    """``call()``'s CheckpointError message, checked to hold ``expected`` and to have come
    after reading far less than the huge file."""
    before = bytes_read()
    with pytest.raises(CheckpointError) as info:
        call()
    assert bytes_read() - before < HUGE // 16, "the file was read before it was refused"
    for text in expected:
        assert text in str(info.value), (text, str(info.value))
    return str(info.value)


def test_fit_refuses_a_huge_file_of_zeros_as_its_checkpoint_unread(tmp_path):
    """A user's ``fit`` into a directory holding 256 MiB of zeros as checkpoint.pt: refused
    by name before training, without reading it; the file is left as it was."""
    run = tmp_path / "run"
    run.mkdir()
    path = sparse(run / CHECKPOINT_NAME, HUGE)
    refused(lambda: train(run), str(path), "not a pyro_gen checkpoint", "fresh directory")
    assert path.stat().st_size == HUGE and path.stat().st_blocks * 512 < HUGE
    assert not (run / METRICS_NAME).exists()


@pytest.mark.parametrize("reader", [load_checkpoint, verify_checkpoint, read_checkpoint_bytes])
def test_a_checkpoint_padded_with_a_huge_tail_is_refused_unread(tmp_path, reader):
    """A real checkpoint with 256 MiB appended (a copy gone wrong): its header records its
    size, which the file's size contradicts before anything past the header is read."""
    train(tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    written = path.stat().st_size
    os.truncate(path, HUGE)
    message = refused(lambda: reader(path), str(path), "truncated or padded", "from a copy")
    header_line = len(path.read_bytes()[: 4096 + len(MAGIC)].split(b"\n")[1]) + len(MAGIC) + 1
    assert f"({HUGE - header_line} bytes of data, {written - header_line} written)" in message
    os.truncate(path, written)  # the tail removed, the checkpoint loads again
    assert load_checkpoint(path)["progress"]["epoch"] == 1


def test_a_header_claiming_a_huge_size_is_refused_from_the_files_own_size(tmp_path):
    """A header that records more bytes than the file holds: refused as truncated, without
    trying to read what the header promises."""
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(MAGIC + b'{"size": 1099511627776, "sha256": "00"}\n' + b"x" * 10)
    refused(lambda: load_checkpoint(path), "truncated or padded", "(10 bytes of data")


def test_a_fifo_or_a_directory_named_checkpoint_is_no_checkpoint(tmp_path):
    """A FIFO under the name blocked the reader's open forever (it waited for a writer)."""
    os.mkfifo(tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="no checkpoint at .*train first"):
        load_checkpoint(tmp_path / CHECKPOINT_NAME)
    (tmp_path / "d" / CHECKPOINT_NAME).mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoint at .*train first"):
        verify_checkpoint(tmp_path / "d" / CHECKPOINT_NAME)


@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_the_command_line_refuses_a_huge_checkpoint_in_one_line_unread(tmp_path, capsys, command):
    run = trained_run(tmp_path)
    sparse(run / CHECKPOINT_NAME, HUGE)
    before = bytes_read()
    status, _, err = cli(capsys, command, run)
    assert bytes_read() - before < HUGE // 16
    assert_one_line_error(status, err, str(run / CHECKPOINT_NAME), "not a pyro_gen checkpoint")


def test_convert_checkpoint_refuses_a_file_that_is_not_torch_save_unread(tmp_path, capsys):
    """``convert-checkpoint --trust-pickle`` read the whole file into memory to find it was
    not a pickle; zeros are refused from their first bytes, and nothing is written."""
    run = trained_run(tmp_path)
    path = sparse(run / CHECKPOINT_NAME, HUGE)
    refused(lambda: convert_legacy_checkpoint(path, trust_pickle=True), "not a torch.save file")
    status, _, err = cli(capsys, "convert-checkpoint", run, "--trust-pickle")
    assert_one_line_error(status, err, "not a torch.save file", "nothing was converted")
    assert not (run / "checkpoint.pt.legacy").exists()


class _Touch:
    """Unpickling this creates ``marker``: it stands for code a crafted file runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_convert_checkpoint_refuses_a_planted_link_before_unpickling(tmp_path, capsys):
    """``convert-checkpoint --trust-pickle`` vouches for the user's own file; a link planted
    at checkpoint.pt was followed, so the file it pointed at was unpickled (its code ran)
    before the rewrite through the link was refused. Now the link is refused first."""
    run = trained_run(tmp_path)
    marker = tmp_path / "code_ran"
    torch.save({"payload": _Touch(marker)}, tmp_path / "elsewhere.pt")
    (run / CHECKPOINT_NAME).unlink()
    (run / CHECKPOINT_NAME).symlink_to(tmp_path / "elsewhere.pt")
    status, _, err = cli(capsys, "convert-checkpoint", run, "--trust-pickle")
    assert not marker.exists(), "the linked file was unpickled"
    assert_one_line_error(status, err, f"{run / CHECKPOINT_NAME} is a symlink", "remove the link")
    assert not (run / "checkpoint.pt.legacy").exists()
