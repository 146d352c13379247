"""``pyro-gen train --epochs N`` where N trains nothing: a fresh ``--epochs 0`` records the
run's settings only, and a resume already at N epochs says that nothing was trained."""

from __future__ import annotations

import json

import torch

import pyro_gen
from tests.reliability.run_fixtures import assert_one_line_error, cli

TRAIN = ["train", "realnvp", "--data", "moons", "--toy-samples", "128", "--batch-size", "64",
         "--test-subset", "16", "--no-progress", "--no-compile"]  # fmt: skip


def test_epochs_0_records_the_settings_and_a_later_train_continues_as_a_straight_run(
    tmp_path, capsys
):
    run = tmp_path / "run"
    status, out, err = cli(capsys, *TRAIN, "--epochs", "0", "--out", run)
    assert status == 0, err
    # It printed "trained realnvp on moons: 0 epochs" and drew samples.png from an untrained
    # model that no file kept; evaluate and sample then said "to retrain".
    assert "trained nothing" in out and "--epochs" in out, out
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["config.json"]
    for command in (["evaluate", run], ["sample", run, "-n", "2"]):
        status, _, err = cli(capsys, *command)
        assert_one_line_error(status, err, "no epoch", "--epochs 0", "--epochs 1")
    status, out, err = cli(capsys, *TRAIN, "--epochs", "1", "--out", run)
    assert status == 0 and "1 epoch" in out, err
    straight = tmp_path / "straight"
    assert cli(capsys, *TRAIN, "--epochs", "1", "--out", straight)[0] == 0
    a, b = pyro_gen.load(run).state_dict(), pyro_gen.load(straight).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the recorded settings, the same run


def test_a_resume_with_no_epochs_left_says_so_and_keeps_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, *TRAIN, "--epochs", "1", "--out", run)[0] == 0
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for epochs in ("1", "0"):
        status, out, err = cli(capsys, *TRAIN, "--epochs", epochs, "--out", run)
        assert status == 0, err
        # it printed "trained realnvp on moons: 1 epoch" and drew new samples
        assert f"nothing to train: {run} holds 1 epoch" in out and "trained realnvp" not in out
        after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        assert after.keys() == files.keys()
        assert all(after[n] == files[n] for n in files if n != "config.json"), out
    assert json.loads((run / "metrics.jsonl").read_text())["epoch"] == 1
    # a trained run whose checkpoint is gone is not mistaken for one set up with --epochs 0
    (run / "checkpoint.pt").unlink()
    status, _, err = cli(capsys, "sample", run, "-n", "2")
    assert_one_line_error(status, err, "has no checkpoint.pt", "records 1 epoch", "deleted")


def test_a_resume_without_epochs_says_it_met_the_default(tmp_path, capsys):
    # "--epochs 3 counts the epochs done" to a user who typed no --epochs
    run = tmp_path / "run"
    assert cli(capsys, *TRAIN, "--epochs", "3", "--out", run)[0] == 0
    status, out, err = cli(capsys, *TRAIN, "--out", run)
    assert status == 0, err
    assert "holds 3 epochs, and --epochs 3 (the default) counts the epochs done" in out, out
    assert "give --epochs 4 or more" in out
