"""Command-line inputs not in the table-driven sweep of ``test_cli_inputs``: an empty path,
as ``--out "$RUN"`` gives with ``RUN`` unset. ``Path("")`` is the current directory, so
``train --out ""`` trained into wherever the command ran (its checkpoint, config, metrics,
lock file and figures among the user's own files) and ``sample --out ""`` wrote
``samples.png`` there. Each is now refused in one line naming the argument, and nothing is
written. A huge ``config.json`` is refused by its size rather than read whole.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.run_fixtures import (
    SMALL_VAE,
    assert_one_line_error,
    cli,
    run_files,
    trained_run,
)


def bytes_read() -> int:
    """Bytes this process has read so far (``rchar`` of ``/proc/self/io``)."""
    line = next(t for t in Path("/proc/self/io").read_text().splitlines() if t.startswith("rchar"))
    return int(line.split()[1])


TRAIN = ["train", "vae", "--data", "digits", "--epochs", "1", "--subset", "256", *SMALL_VAE]

CASES = {
    "train_out": ([*TRAIN, "--out", ""], "--out"),
    "evaluate_run": (["evaluate", ""], "run"),
    "sample_run": (["sample", ""], "run"),
    "sample_out": (["sample", "{run}", "--out", ""], "--out"),
    "impute_run": (["impute", ""], "run"),
    "impute_out": (["impute", "{run}", "--out", ""], "--out"),
    "convert_run": (["convert-checkpoint", "", "--trust-pickle"], "run"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_empty_path_is_refused_and_nothing_is_written_where_the_command_ran(
    tmp_path, capsys, monkeypatch, name
):
    args, argument = CASES[name]
    run = trained_run(tmp_path)
    before = run_files(run)
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    status, _, err = cli(capsys, *(a.format(run=run) for a in args))
    assert_one_line_error(
        status, err, f"argument {argument}: must name a path, got an empty string", "'.'"
    )
    assert list(here.iterdir()) == []
    assert run_files(run) == before


def test_the_current_directory_named_as_dot_still_trains_there(tmp_path, capsys, monkeypatch):
    """'.' is an explicit choice of the current directory, which the refusal points to."""
    monkeypatch.chdir(tmp_path)
    status, _, err = cli(capsys, *TRAIN, "--out", ".")
    assert status == 0, err
    assert {"checkpoint.pt", "config.json", "metrics.jsonl"} <= {p.name for p in Path().iterdir()}


@pytest.mark.parametrize("name", ["checkpoint.pt", "metrics.jsonl", "curves.png", "samples.png"])
def test_a_users_folder_holding_a_file_a_run_writes_is_not_trained_into(tmp_path, capsys, name):
    """``--out`` naming a folder of the user's (no config.json) that holds a ``samples.png``
    or a ``metrics.jsonl`` of their own: a fresh run replaced it. Refused, naming it; the
    folder's files are as they were."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / name).write_bytes(b"the user's own " + name.encode())
    (folder / "notes.txt").write_text("kept")
    before = run_files(folder)
    status, _, err = cli(capsys, *TRAIN, "--out", folder)
    assert_one_line_error(status, err, f"{folder} has {name} but no config.json", "fresh --out")
    assert run_files(folder) == before


def test_a_users_folder_holding_only_other_files_is_trained_into(tmp_path, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("kept")
    status, _, err = cli(capsys, *TRAIN, "--out", folder)
    assert status == 0, err
    assert (folder / "notes.txt").read_text() == "kept" and (folder / "config.json").is_file()


@pytest.mark.parametrize("command", ["sample", "evaluate", "train"])
def test_a_huge_config_json_is_refused_in_one_line_unread(tmp_path, capsys, command):
    """A file of 256 MiB of zeros as config.json (sparse: no disk) was read whole before it
    was refused as not JSON; now its size is refused, naming it, before reading."""
    run = trained_run(tmp_path)
    config = run / "config.json"
    os.truncate(config, 256 * 2**20)
    args = [*TRAIN, "--out", run] if command == "train" else [command, run]
    before = bytes_read()
    status, _, err = cli(capsys, *args)
    assert bytes_read() - before < 16 * 2**20
    assert_one_line_error(status, err, f"{config} is {256 * 2**20} bytes", "not read")
    assert config.stat().st_size == 256 * 2**20


class Hung(BaseException):
    """Raised by the alarm: no handler of the command's catches it, as one may OSError."""


def test_a_fifo_as_the_metrics_of_a_run_without_checkpoint_does_not_hang(tmp_path, capsys):
    """``sample`` on a run whose checkpoint is gone reads metrics.jsonl to say whether it was
    ever trained: a FIFO planted there blocked that read forever (the alarm ends the test
    instead of hanging the suite)."""
    run = trained_run(tmp_path)
    (run / "checkpoint.pt").unlink()
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")

    def hung(signum: int, frame: object) -> None:
        raise Hung("the command blocked reading the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(15)
    try:
        status, _, err = cli(capsys, "sample", run)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert_one_line_error(status, err, f"{run} has no checkpoint.pt", "train it")


def test_output_piped_into_a_reader_that_exits_is_one_line_not_a_path_error(tmp_path):
    """``pyro-gen sample RUN | head -0``: the closed pipe was reported as "Broken pipe; check
    that path, then rerun", blaming a path the command was never given. Now one line says
    the output was closed, with the shell's status for it (141); the samples were written."""
    run = trained_run(tmp_path)
    (run / "samples.png").unlink()
    read, write = os.pipe()
    os.close(read)  # the reader has exited before the first line
    done = subprocess.run(
        [sys.executable, "-m", "pyro_gen", "sample", str(run)],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    os.close(write)
    assert done.returncode == 141, done.stderr
    assert done.stderr.strip().splitlines() == [
        "pyro-gen: stopped: its output was closed (the reader of a pipe exited); the run's "
        "files written so far are intact"
    ]
    assert (run / "samples.png").is_file()
