"""kill -9 at a random point of training, then resume: bit-exact against a run never killed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS = 150  # 6 batches an epoch: the kill lands inside some epoch, between checkpoints


def _command(run: Path, out: Path, checkpoint_every: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.reliability.train_until_killed",
        str(run),
        str(out),
        str(STEPS),
        str(checkpoint_every),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _run(run: Path, out: Path, checkpoint_every: int) -> None:
    subprocess.run(_command(run, out, checkpoint_every), cwd=ROOT, env=_env(), check=True)


@pytest.mark.slow
def test_kill_at_a_random_point_then_resume_is_bit_exact(tmp_path):
    checkpoint_every = 4  # steps=, mid-epoch checkpoints and epoch-end ones all in play
    _run(tmp_path / "straight", tmp_path / "straight.pt", checkpoint_every)

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _command(run, tmp_path / "never.pt", checkpoint_every), cwd=ROOT, env=_env()
    )
    deadline = time.monotonic() + 60
    while not (run / "checkpoint.pt").exists():  # let it reach training
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before a checkpoint"
        time.sleep(0.01)
    time.sleep(random.Random().uniform(0.05, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "never.pt").exists(), "the run finished before it was killed"

    _run(run, tmp_path / "resumed.pt", checkpoint_every)
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    # nothing left behind by the killed write
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
