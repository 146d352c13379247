"""Shared pieces of the run-directory fault tests: a small trained run to damage, the
command line called in-process, and the one-line error check."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest

from pyro_gen.cli import main

SMALL_VAE = ["--z-dim", "4", "--hidden-dim", "16", "--batch-size", "256", "--no-progress"]
TRAIN_VAE = ["train", "vae", "--data", "digits", "--epochs", "1", *SMALL_VAE]


@functools.cache
def _trained_vae() -> Path:
    root = Path(tempfile.mkdtemp(prefix="pyro-gen-reliability-"))
    atexit.register(shutil.rmtree, root, True)
    run = root / "vae"
    assert main([*TRAIN_VAE, "--out", str(run)]) == 0
    return run


def trained_run(tmp_path: Path, name: str = "run") -> Path:
    """A fresh copy of a one-epoch VAE run on digits (trained once per session)."""
    run = tmp_path / name
    shutil.copytree(_trained_vae(), run)
    return run


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Runs ``pyro-gen ARGS`` in this process; returns (status, stdout, stderr)."""
    capsys.readouterr()
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, err: str, *expected: str) -> None:
    """A refusal as the command line must give it: non-zero, one line, no traceback."""
    assert status != 0, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-gen: error: "), err
    for text in expected:
        assert text in lines[0], (text, lines[0])


def run_files(run: Path) -> dict[str, bytes]:
    """Every file of a run directory by its relative path, with its bytes (the lock file,
    which a refused command may take and release, left out): equal before and after a
    refused command when nothing in the run was changed or added."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != ".pyro-gen.lock"
    }
