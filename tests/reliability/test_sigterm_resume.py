"""SIGTERM (what SLURM or Kubernetes send before they kill a job) to ``pyro-gen train`` in
another process: training stops after the step the signal came in and writes that step's
checkpoint, with one line saying how to resume, status 143 (128 + 15) and the run directory
released; the resumed run is, bit for bit, the run never stopped. Before, SIGTERM ended the
process as ``kill -9`` does (no line, no clean-up), then as Ctrl-C does (the epoch's steps
lost).

The subprocess signals readiness from a step callback inside its second epoch and waits
there, so the signal lands at the same point every time, with no timing. Run as
``python -m tests.reliability.test_sigterm_resume READY_FILE STOP_AT_STEP ARGS...``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# 512 examples in batches of 64: 8 steps an epoch; step 11 is inside the second epoch
ARGS = ["train", "vae", "--data", "digits", "--epochs", "3", "--batch-size", "64",
        "--subset", "512", "--test-subset", "64", "--z-dim", "2", "--hidden-dim", "16",
        "--no-progress", "--no-compile"]  # fmt: skip
STOP_AT = 11


def _train_until_signalled(ready: str, stop_at: int, argv: list[str]) -> int:
    """``pyro-gen ARGV`` whose training waits at step ``stop_at`` after creating ``ready``."""
    import pyro_gen.cli_train as cli_train
    from pyro_gen.cli import main
    from pyro_gen.cli_interrupt import SigtermStop

    real_fit = cli_train.fit

    def fit(*args, step_callbacks=(), **kwargs):
        (stop,) = [cb for cb in step_callbacks if isinstance(cb, SigtermStop)]

        def wait_there(step: int, model: object) -> None:
            if step == stop_at:
                Path(ready).touch()
                deadline = time.monotonic() + 60
                while not stop.requested and time.monotonic() < deadline:
                    time.sleep(0.01)  # until the SIGTERM's handler has asked to stop

        # before the CLI's stop: it answers at this step, as at any step the signal comes in
        return real_fit(*args, step_callbacks=[wait_there, *step_callbacks], **kwargs)

    cli_train.fit = fit
    return main(argv)


def _terminated_run(tmp_path: Path) -> tuple[Path, subprocess.CompletedProcess]:
    run, ready = tmp_path / "stopped", tmp_path / "ready"
    command = [sys.executable, "-m", "tests.reliability.test_sigterm_resume", str(ready),
               str(STOP_AT), *ARGS, "--out", str(run)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training never reached the step"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()  # nothing when it has ended
    return run, subprocess.CompletedProcess(command, proc.returncode, out, err)


def _without_times(checkpoint: dict) -> dict:
    """The checkpoint less the clock readings of its epoch records."""
    progress = dict(checkpoint["progress"])
    progress["history"] = [
        {k: v for k, v in record.items() if k not in ("time_s", "examples_per_s")}
        for record in progress["history"]
    ]
    return {**checkpoint, "progress": progress}


def test_sigterm_stops_train_with_one_line_and_the_resume_is_bit_exact(tmp_path, capsys):
    from pyro_gen.infer.checkpoint import load_checkpoint
    from tests.reliability.identical_state import assert_identical
    from tests.reliability.run_fixtures import cli

    run, stopped = _terminated_run(tmp_path)
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stdout == "" and "Traceback" not in stopped.stderr
    lines = stopped.stderr.splitlines()
    assert len(lines) == 1, stopped.stderr
    assert lines[0] == (
        f"pyro-gen: terminated (SIGTERM) after step {STOP_AT}, checkpointed; "
        f"{run / 'checkpoint.pt'}, the last checkpoint, is intact: rerun the same command to "
        "resume from it"
    )
    # the epoch's steps up to the signal's are kept: epoch 1, then the part of epoch 2
    records = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("partial", False)) for r in records] == [(8, False), (STOP_AT, True)]
    assert load_checkpoint(run / "checkpoint.pt")["progress"]["step"] == STOP_AT

    def own_handler(signum, frame):  # a handler the caller of main had: main gives it back
        pass

    previous = signal.signal(signal.SIGTERM, own_handler)
    try:
        status, _, err = cli(capsys, *ARGS, "--out", run)  # the same command resumes
        assert signal.getsignal(signal.SIGTERM) is own_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert status == 0, err
    straight = tmp_path / "straight"
    assert cli(capsys, *ARGS, "--out", straight)[0] == 0
    resumed, whole = (
        load_checkpoint(run / "checkpoint.pt"),
        load_checkpoint(straight / "checkpoint.pt"),
    )
    assert resumed["progress"]["epoch"] == 3
    assert_identical(_without_times(resumed), _without_times(whole))


def test_sigterm_before_the_first_checkpoint_says_nothing_to_resume(tmp_path, monkeypatch, capsys):
    from pyro_gen import cli
    from pyro_gen.cli_interrupt import Terminated

    def terminated(args):
        raise Terminated

    monkeypatch.setattr(cli, "train", terminated)
    status = cli.main([*ARGS, "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert status == 143 and out == ""
    assert (
        err
        == "pyro-gen: terminated (SIGTERM) before the first checkpoint; nothing to resume from\n"
    )


def test_a_sigterm_that_was_ignored_stays_ignored() -> None:
    from pyro_gen.cli_interrupt import sigterm_raises

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # nohup-style: meant to outlive it
    try:
        with sigterm_raises():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(_train_until_signalled(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
