"""A trained run used from Python: ``pyro_gen.load`` gives the model, ``run_data`` the data
as that model takes them, and together they reproduce what ``pyro-gen evaluate`` reports and
run in a plain Pyro program (``Predictive``)."""

from __future__ import annotations

import json

import pyro
import pytest
import torch
from pyro.infer import Predictive

import pyro_gen
from pyro_gen.infer import evaluate_elbo
from pyro_gen.runs import RunError, run_data
from tests.reliability.run_fixtures import cli

SMALL = ["--z-dim", "4", "--hidden-dim", "32", "--batch-size", "64", "--subset", "128",
         "--test-subset", "32", "--epochs", "1", "--no-progress", "--no-compile"]  # fmt: skip


def test_a_loaded_vae_scores_its_run_data_as_evaluate_does(tmp_path, capsys):
    # Without run_data a user of pyro_gen.load had the raw uint8 digits and no word of how
    # training prepared them: the VAE refused them, and x / 255 scored other images.
    run = tmp_path / "vae"
    status, _, err = cli(capsys, "train", "vae", "--data", "digits", *SMALL, "--out", run)
    assert status == 0, err
    status, _, err = cli(capsys, "evaluate", run, "--k", "5", "--num-test", "40", "--no-progress")
    assert status == 0, err
    reported = json.loads((run / "evaluation.json").read_text())

    vae = pyro_gen.load(run)
    x, transform = run_data(run, "test", limit=40)
    assert x.shape == (40, 8, 8) and x.dtype == torch.uint8
    pyro.set_rng_seed(json.loads((run / "config.json").read_text())["seed"])  # evaluate's
    assert evaluate_elbo(vae, x, transform=transform) == pytest.approx(reported["test_elbo"])

    batch = transform(x[:5])  # binary images, drawn afresh at each call
    assert set(batch.unique().tolist()) <= {0.0, 1.0}
    draws = Predictive(vae.model, guide=vae.guide, num_samples=3)(batch)
    assert draws["z"].shape == (3, 5, 4) and draws["x"].shape == (3, 5, 8, 8)

    train, _ = run_data(run, "train")  # what fit trained on: the first --subset examples
    assert train.shape == (128, 8, 8)


def test_run_data_keeps_a_missing_rate_runs_mask_and_a_flows_plain_points(tmp_path, capsys):
    run = tmp_path / "miwae"
    status, _, err = cli(capsys, "train", "vae", "--data", "digits", "--missing-rate", "0.5",
                         *SMALL, "--epochs", "0", "--out", run)  # fmt: skip
    assert status == 0, err
    data, _ = run_data(run, "test", limit=10)
    assert set(data) == {"x", "mask"} and data["mask"].shape == (10, 8, 8)
    assert 0.3 < (~data["mask"]).float().mean() < 0.7  # the run's share hidden

    run = tmp_path / "flow"
    status, _, err = cli(capsys, "train", "realnvp", "--data", "moons", "--toy-samples", "400",
                         "--epochs", "0", "--no-progress", "--out", run)  # fmt: skip
    assert status == 0, err
    points, transform = run_data(run)
    assert transform is None and points.shape == (100, 2)  # evaluate's test set: a quarter


@pytest.mark.parametrize(
    "kwargs, message",
    [({"split": "valid"}, "split must be 'train' or 'test'"), ({"limit": 0}, "positive int")],
)
def test_run_data_refuses_what_it_cannot_give(kwargs, message, tmp_path, capsys):
    with pytest.raises(RunError, match="does not exist"):
        run_data(tmp_path / "none")
    run = tmp_path / "vae"
    assert cli(capsys, "train", "vae", "--data", "digits", "--epochs", "0", "--out", run)[0] == 0
    with pytest.raises(ValueError, match=message):
        run_data(run, **kwargs)


@pytest.mark.parametrize(
    "device, message",
    [
        ("gpu", "unknown device 'gpu': use cpu, cuda or cuda:N"),
        ("meta", "cannot hold a trained model; use cpu, cuda or cuda:N"),
        ("cuda:99", "CUDA device"),  # none here, or fewer than 100
    ],
)
def test_loading_a_run_onto_a_device_it_cannot_use_is_one_clear_error(
    device, message, tmp_path, capsys
):
    # pyro_gen.load(run, device="cuda") on a CPU-only torch raised torch's
    # "AssertionError: Torch not compiled with CUDA enabled", and "gpu" a list of 25 names
    run = tmp_path / "vae"
    status, _, err = cli(capsys, "train", "vae", "--data", "digits", *SMALL, "--out", run)
    assert status == 0, err
    with pytest.raises(ValueError, match="device") as caught:
        pyro_gen.load(run, device=device)
    assert message in str(caught.value)
