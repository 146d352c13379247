"""Shared pieces of the run-directory fault tests: a small trained run to damage, the
command line called in-process, and the one-line error check."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Case:
    """One row of a bad-input sweep: the command's arguments, the words its one-line error
    must hold, and a ``setup(run, tmp)`` that plants the fault first."""

    args: list[str]
    expect: tuple[str, ...]
    setup: Callable[[Path, Path], None] | None = None
    creates_nothing: bool = False  # a refused fresh run leaves no directory behind


def planted_symlink(name: str) -> Callable[[Path, Path], None]:
    """A setup that plants ``run/name`` as a symlink to a file outside the run, which a
    command must refuse to write through."""

    def setup(run: Path, tmp: Path) -> None:
        (tmp / "victim").write_text("not yours")
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(tmp / "victim")

    return setup
