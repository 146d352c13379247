"""Run directories under concurrent writers, read-only file systems and resumes, and the
honesty of what the command line reports about them."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pyro_gen.infer.checkpoint import LOCK_NAME, run_lock
from tests.reliability.run_fixtures import (
    SMALL_VAE,
    TRAIN_VAE,
    assert_one_line_error,
    cli,
    trained_run,
)

REPO = Path(__file__).resolve().parents[2]


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_second_train_into_a_busy_run_is_refused_at_once_and_the_first_is_kept(tmp_path, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "pyro_gen", *TRAIN_VAE[:5], "2", *SMALL_VAE, "--out", str(run)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (run / LOCK_NAME).is_file() or (run / LOCK_NAME).read_text().strip() != str(
            first.pid
        ):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.02)
        start = time.monotonic()
        status, _, err = cli(capsys, *TRAIN_VAE, "--out", run)
        refused_after = time.monotonic() - start
        out, first_err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert_one_line_error(status, err, str(run), "in use", f"pid {first.pid}")
    assert refused_after < 2.0
    assert first.returncode == 0, first_err
    assert _epochs(run) == [1, 2]  # the first run's record, whole and alone


def test_the_lock_is_reentrant_in_one_process_and_held_at_the_os_level(tmp_path):
    def free() -> bool:  # another open file description: flock conflicts even in-process
        with open(tmp_path / LOCK_NAME, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(f, fcntl.LOCK_UN)
            return True

    with run_lock(tmp_path):
        with run_lock(tmp_path):  # the CLI's lock, then fit's
            assert not free()
        assert not free()  # the inner release keeps the outer hold
    assert free()


def test_leftover_temporaries_of_a_killed_write_are_removed_when_training_resumes(tmp_path, capsys):
    run = trained_run(tmp_path)
    leftover = run / ".checkpoint.pt.k1ll3d00.tmp"
    leftover.write_bytes(b"PYRO_GEN CHECKPOINT\n{")  # what a kill mid-write leaves
    status, _, err = cli(capsys, *TRAIN_VAE, "--out", run)  # 1 epoch: already done
    assert status == 0, err
    assert not leftover.exists()


def test_resume_with_an_override_records_the_change(tmp_path, capsys):
    run = trained_run(tmp_path)
    status, _, err = cli(capsys, *TRAIN_VAE[:5], "2", "--out", run, "--no-progress",
                         "--lr", "0.002", "--override", "lr")  # fmt: skip
    assert status == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 0.002
    assert config["overrides"] == [{"lr": {"from": 0.001, "to": 0.002}}]
    assert config["options"]["z_dim"] == 4  # the recorded architecture, not the default
    assert _epochs(run) == [1, 2]


def test_reported_paths_exist(tmp_path, capsys):
    status, out, err = cli(capsys, *TRAIN_VAE[:5], "0", *SMALL_VAE, "--out", tmp_path / "zero")
    assert status == 0, err
    assert "metrics:" not in out  # --epochs 0 writes no metrics
    printed = [line.split(": ", 1)[1] for line in out.splitlines() if ": /" in line]
    assert printed and all(Path(p).exists() for p in printed), out

    run = trained_run(tmp_path)
    folder = tmp_path / "figures"
    folder.mkdir()
    for target, written in ((folder, folder / "samples.png"), (tmp_path / "s.png", None)):
        status, out, err = cli(capsys, "sample", run, "-n", "4", "--out", target)
        assert status == 0, err
        reported = Path(out.strip().rsplit(" to ", 1)[1])
        assert reported == (written or target) and reported.is_file()
        assert reported.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_iwae_run_labels_its_bound_truthfully(tmp_path, capsys):
    args = [*TRAIN_VAE, "--objective", "iwae", "--k", "2", "--subset", "256"]
    status, out, err = cli(capsys, *args, "--test-subset", "64", "--out", tmp_path / "iwae")
    assert status == 0, err
    # fit's held-out score is the ELBO whatever the objective (evaluate_elbo), so say ELBO
    assert "test ELBO" in out and "IWAE" not in out, out
    config = json.loads((tmp_path / "iwae" / "config.json").read_text())
    assert config["test_elbo_is"] == "ELBO"  # what metrics.jsonl calls test_elbo


_READ_ONLY_DRIVER = """
import contextlib, io, json, sys, time
from pyro_gen.cli import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(args)
    results.append([status, err.getvalue(), time.monotonic() - start])
print(json.dumps(results))
"""


def test_read_only_directories_are_refused_before_any_work_leaving_the_run_unchanged(tmp_path):
    # Permission bits do not stop root, so as root the commands run without the capabilities
    # that override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH).
    as_root = os.geteuid() == 0
    if as_root and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a directory read-only")
    root = Path(tempfile.mkdtemp(prefix="pyro-gen-read-only-"))
    try:
        scratch = Path(tempfile.mkdtemp(prefix="pyro-gen-scratch-"))
        run = trained_run(root)
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_NAME}
        commands = [
            [*TRAIN_VAE, "--out", str(root / "new")],
            [*TRAIN_VAE[:5], "2", "--out", str(run), "--no-progress"],
            ["evaluate", str(run), "--k", "1000000"],  # hours of work if not refused first
            ["sample", str(run)],
        ]
        for d in (root, run):
            d.chmod(0o555)
        drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
        proc = subprocess.run(
            [
                *(drop if as_root else []),
                sys.executable,
                "-c",
                _READ_ONLY_DRIVER,
                json.dumps(commands),
            ],  # fmt: skip
            cwd=REPO,
            env={**os.environ, "MPLCONFIGDIR": str(scratch)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        results = json.loads(proc.stdout)
        after = {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_NAME}
    finally:
        for d in (root, *root.iterdir()):
            d.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    expected = [
        ("cannot create run directory", str(root / "new")),
        ("cannot write", str(run)),
        ("cannot write evaluation.json",),
        ("cannot write samples.png",),
    ]
    for (status, err, seconds), words in zip(results, expected):
        assert_one_line_error(status, err, *words)
        assert seconds < 30, (words, seconds)
    assert after == before


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])


@pytest.fixture
def small_file_system():
    """A 512 KiB tmpfs (needs root and mount), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    where = Path(tempfile.mkdtemp(prefix="pyro-gen-small-fs-"))
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(where)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        where.rmdir()


def test_a_full_disk_at_checkpoint_time_is_one_line_and_keeps_the_last_checkpoint(
    small_file_system, tmp_path, capsys
):
    run = small_file_system / "run"
    shutil.copytree(trained_run(tmp_path), run)
    checkpoint = (run / "checkpoint.pt").read_bytes()
    stats = os.statvfs(small_file_system)
    # Room for config.json, not for another checkpoint.
    filler = stats.f_bavail * stats.f_frsize - len(checkpoint) // 2
    (small_file_system / "filler").write_bytes(b"\0" * filler)
    status, _, err = cli(capsys, *TRAIN_VAE[:5], "2", "--out", run, "--no-progress")
    assert_one_line_error(status, err, "No space left on device", str(run / "checkpoint.pt"))
    assert (run / "checkpoint.pt").read_bytes() == checkpoint  # the last one, kept whole
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]
    assert _epochs(run) == [1]
