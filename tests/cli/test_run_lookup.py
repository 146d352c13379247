"""Pointing a command at the wrong path: a folder of runs names the runs in it, and a file
inside a run names the run's folder (both said only "not a run directory")."""

from __future__ import annotations

import pytest

import pyro_gen
from pyro_gen.runs import RunError
from tests.reliability.run_fixtures import assert_one_line_error, cli


def _set_up(run, capsys):
    status, _, err = cli(capsys, "train", "vae", "--data", "digits", "--epochs", "0", "--out", run)
    assert status == 0, err


def test_a_folder_of_runs_names_them(tmp_path, capsys):
    for name in ("b-vae", "a-vae"):
        _set_up(tmp_path / "runs" / name, capsys)
    (tmp_path / "runs" / "notes").mkdir()  # not a run: not named
    status, _, err = cli(capsys, "evaluate", tmp_path / "runs")
    runs = f"{tmp_path / 'runs' / 'a-vae'}, {tmp_path / 'runs' / 'b-vae'}"
    assert_one_line_error(status, err, "it is not a pyro-gen run directory", f"it holds {runs}")
    assert "notes" not in err
    with pytest.raises(RunError, match="it holds"):
        pyro_gen.load(tmp_path / "runs")
    # a folder without runs says what it said before, and no "holds"
    status, _, err = cli(capsys, "sample", tmp_path / "runs" / "notes")
    assert_one_line_error(status, err, "not a pyro-gen run directory")
    assert "holds" not in err


def test_many_runs_are_counted_past_the_first_ones(tmp_path, capsys):
    for i in range(12):
        (tmp_path / f"run{i:02d}").mkdir()
        (tmp_path / f"run{i:02d}" / "config.json").write_text("{}")
    status, _, err = cli(capsys, "evaluate", tmp_path)
    assert_one_line_error(status, err, "run09", "and 2 more")
    assert "run10" not in err


def test_a_file_in_a_run_names_the_run(tmp_path, capsys):
    run = tmp_path / "vae"
    _set_up(run, capsys)
    status, _, err = cli(capsys, "sample", run / "config.json")
    assert_one_line_error(status, err, f"is a file of the run directory {run}; give {run}")
