"""``pyro-gen train vae --missing-rate``, ``pyro-gen impute`` and ``pyro-gen train ssvae``
end to end on sklearn's digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pyro_gen
from pyro_gen.cli_models import load_split
from pyro_gen.cli_models_vae import VAE_MODELS, missing_mask
from tests.reliability.run_fixtures import assert_one_line_error, cli

SMALL = ["--z-dim", "4", "--hidden-dim", "32", "--batch-size", "64", "--subset", "256",
         "--test-subset", "64", "--epochs", "1", "--no-progress", "--no-compile"]  # fmt: skip


def test_miwae_trains_on_incomplete_images_and_imputes_them(tmp_path, capsys):
    run = tmp_path / "miwae"
    status, out, err = cli(capsys, "train", "vae", "--data", "digits", "--missing-rate", "0.5",
                           "--objective", "iwae", "--k", "4", *SMALL, "--out", run)  # fmt: skip
    assert status == 0, err
    assert "bits/dim" not in out  # a bound on the observed pixels is not per pixel of all
    status, _, err = cli(capsys, "evaluate", run, "--k", "10", "--num-test", "32")
    assert status == 0, err
    results = json.loads((run / "evaluation.json").read_text())
    assert results["missing_rate"] == 0.5 and "bits_per_dim" not in results
    # the bound scores the observed half of each image: far above that of the whole images
    config = json.loads((run / "config.json").read_text())
    x = load_split("digits", "test", config, 32)[0].float() / 16
    whole = pyro_gen.infer.evaluate_elbo(pyro_gen.load(run), x.bernoulli())
    assert results["test_elbo"] > whole + 5

    status, out, err = cli(capsys, "impute", run, "--k", "20", "--num-test", "32")
    assert status == 0, err
    imputed = json.loads((run / "imputation.json").read_text())
    assert imputed["missing_rate"] == 0.5 and imputed["num_test"] == 32
    assert imputed["vae_mse"] > 0 and imputed["mean_imputation_mse"] > 0
    assert (run / "imputed.png").stat().st_size > 0
    assert f"written to {run / 'imputation.json'}" in out
    # imputing a run twice gives one answer, as evaluating it does: the importance draws
    # come from the run's seed (unseeded, two calls differed in the third digit of vae_mse)
    torch.manual_seed(123)
    status, _, err = cli(capsys, "impute", run, "--k", "20", "--num-test", "32")
    assert status == 0, err
    assert json.loads((run / "imputation.json").read_text()) == imputed

    status, _, err = cli(capsys, "impute", run, "--missing-rate", "1.5")
    assert status == 2 and "must lie in [0, 1)" in err


def test_a_hierarchical_vae_trained_on_incomplete_images_imputes_them(tmp_path, capsys):
    # impute was refused for --layers 2 ("fills pixels with a one-layer vae")
    run = tmp_path / "hvae"
    status, _, err = cli(capsys, "train", "vae", "--data", "digits", "--missing-rate", "0.5",
                         "--layers", "2", *SMALL, "--out", run)  # fmt: skip
    assert status == 0, err
    status, _, err = cli(capsys, "impute", run, "--k", "20", "--num-test", "32")
    assert status == 0, err
    imputed = json.loads((run / "imputation.json").read_text())
    assert imputed["num_test"] == 32 and imputed["vae_mse"] > 0
    assert (run / "imputed.png").stat().st_size > 0


def test_missing_masks_are_seeded_per_split():
    x = torch.zeros(500, 8, 8)
    train, again = missing_mask(x, 0.3, 0, "train"), missing_mask(x, 0.3, 0, "train")
    assert torch.equal(train, again) and not torch.equal(train, missing_mask(x, 0.3, 0, "test"))
    assert abs((~train).float().mean().item() - 0.3) < 0.01


def test_ssvae_trains_with_few_labels_and_reports_its_test_error(tmp_path, capsys):
    run = tmp_path / "ssvae"
    status, _, err = cli(capsys, "train", "ssvae", "--data", "digits", "--labels", "30", *SMALL,
                         "--out", run)  # fmt: skip
    assert status == 0, err
    status, _, err = cli(capsys, "evaluate", run, "--num-test", "64")
    assert status == 0, err
    results = json.loads((run / "evaluation.json").read_text())
    model = pyro_gen.load(run)
    assert model.num_classes == 10
    assert 0 <= results["test_error"] <= 1 and results["test_elbo"] < 0
    assert 0 < results["test_elbo_se"] < 5  # an average over 64 examples: it has one
    assert model.sample(3).shape == (3, 8, 8)

    status, _, err = cli(capsys, "impute", run)
    assert_one_line_error(status, err, "impute fills pixels with a vae; ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["ssvae", "--data", "moons"], "ssvae models images"),
        (["ssvae", "--data", "digits", "--labels", "300", "--subset", "256"], "choose fewer"),
        (["vae", "--data", "digits", "--missing-rate", "1"], "must lie in [0, 1)"),
        (["realnvp", "--data", "moons", "--missing-rate", "0.5"], "not an option of realnvp"),
    ],
)
def test_bad_vae_application_options_are_one_line_errors(args, message, tmp_path, capsys):
    status, _, err = cli(capsys, "train", *args, "--epochs", "0", "--out", tmp_path / "run")
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_vae_trains_on_the_mask_file_given_and_refuses_one_of_another_shape(tmp_path, capsys):
    mask = torch.ones(256, 8, 8, dtype=torch.bool)
    mask[:, 4:] = False  # the bottom half of every training image unseen
    torch.save(mask, tmp_path / "mask.pt")
    run = tmp_path / "masked"
    status, _, err = cli(capsys, "train", "vae", "--data", "digits", "--mask-file",
                         tmp_path / "mask.pt", *SMALL, "--out", run)  # fmt: skip
    assert status == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["mask_file"] == str(tmp_path / "mask.pt")
    # what fit trained on: the file's mask for the training images, whole held-out images
    x = torch.zeros(256, 8, 8)
    train = VAE_MODELS["vae"].fit_data(x, None, config, "train")
    assert torch.equal(train["mask"], mask) and train["x"] is x
    assert VAE_MODELS["vae"].fit_data(x, None, config, "test") is x
    np.save(tmp_path / "mask.npy", mask[:, :, :4].numpy().astype(np.uint8))
    status, _, err = cli(capsys, "train", "vae", "--data", "digits", "--mask-file",
                         tmp_path / "mask.npy", *SMALL, "--out", tmp_path / "bad")  # fmt: skip
    assert_one_line_error(
        status, err, "--mask-file", "mask has shape (256, 8, 4)", "images have shape (256, 8, 8)"
    )
    np.save(tmp_path / "mask.npy", np.full((256, 8, 8), 2, dtype=np.uint8))
    status, _, err = cli(capsys, "train", "vae", "--data", "digits", "--mask-file",
                         tmp_path / "mask.npy", *SMALL, "--out", tmp_path / "bad2")  # fmt: skip
    assert_one_line_error(status, err, "boolean or hold only 0 and 1")


def test_ssvae_labelled_passes_and_alpha_reach_the_batches_and_the_model(tmp_path, capsys):
    run = tmp_path / "ssvae"
    weights = ["--labels", "30", "--labelled-passes", "3", "--alpha", "7"]
    status, _, err = cli(
        capsys, "train", "ssvae", "--data", "digits", *weights, *SMALL, "--out", run
    )
    assert status == 0, err
    config = json.loads((run / "config.json").read_text())
    assert pyro_gen.load(run).alpha == 7.0
    x, y = torch.zeros(256, 8, 8), torch.arange(256) % 10
    kinds = [sorted(b) for b in VAE_MODELS["ssvae"].fit_data(x, y, config, "train")()]
    # 226 unlabelled images in batches of 64, and 3 passes over the 30 labelled ones
    assert kinds.count(["x"]) == 4 and kinds.count(["x", "y"]) == 3
