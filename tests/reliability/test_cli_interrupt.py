"""Ctrl-C in each ``pyro-gen`` command: one true line, a non-zero exit, no traceback.

Before, every command said "interrupted; the last checkpoint is intact", also
``sample``, ``evaluate`` and ``impute`` (which write no checkpoint), a ``train`` stopped
before its first checkpoint, and a ``train`` stopped while downloading its data.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import pyro_gen.data.download as download
from pyro_gen import cli


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _trickle_then_interrupt(url, limits):
    yield b"x" * 4096  # a first chunk, so the .part file exists when Ctrl-C comes
    raise KeyboardInterrupt


# command line (RUN: the run directory), what to interrupt, words the line must hold,
# words it must not
CASES = {
    "train, no checkpoint yet": (
        ["train", "vae", "--data", "digits", "--out", "RUN"],
        (cli, "train"),
        ["before the first checkpoint", "nothing to resume"],
        ["intact"],
    ),
    "train, resumable": (
        ["train", "vae", "--data", "digits", "--out", "RUN"],
        (cli, "train"),
        ["RUN/checkpoint.pt, the last checkpoint, is intact", "resume"],
        ["download"],
    ),
    "train, downloading": (
        ["train", "vae", "--data", "mnist", "--out", "RUN", "--epochs", "1"],
        (download, "iter_body"),
        ["before the first checkpoint", "partial download was removed"],
        ["intact"],
    ),
    "evaluate": (["evaluate", "RUN"], (cli, "read_config"), ["evaluate leaves"], ["intact"]),
    "sample": (["sample", "RUN"], (cli, "read_config"), ["sample leaves"], ["intact"]),
    "impute": (["impute", "RUN"], (cli, "read_config"), ["impute leaves"], ["intact"]),
    "convert-checkpoint": (
        ["convert-checkpoint", "RUN", "--trust-pickle"],
        (cli, "read_config"),
        ["RUN/checkpoint.pt is whole", "either the original or the converted"],
        ["download"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ctrl_c_prints_one_true_line(case, tmp_path, monkeypatch, capsys):
    argv, (where, name), said, unsaid = CASES[case]
    run = tmp_path / "run"
    if case == "train, resumable":
        run.mkdir()
        (run / "checkpoint.pt").write_bytes(b"a checkpoint")
    monkeypatch.setenv("PYRO_GEN_DATA", str(tmp_path / "data"))
    stand_in = _trickle_then_interrupt if name == "iter_body" else _interrupt
    monkeypatch.setattr(where, name, stand_in)
    status = cli.main([str(run) if a == "RUN" else a for a in argv])
    out, err = capsys.readouterr()
    assert status == 130 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-gen: interrupted"), err
    assert "Traceback" not in err
    line = lines[0].replace(str(run), "RUN")
    for words in said:
        assert words in line, line
    for words in unsaid:
        assert words not in line, line
    if name == "iter_body":  # what the line says: no partial download stays behind
        assert not [p for p in Path(tmp_path / "data").rglob("*") if p.is_file()]
