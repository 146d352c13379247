"""``pyro-gen train gan|wgan|cgan|cyclegan``, ``sample`` and ``evaluate`` end to end on tiny
data."""

from __future__ import annotations

import json
import math

import pytest
import torch

import pyro_gen
from pyro_gen.cli_models import MIXTURES
from pyro_gen.data import load
from pyro_gen.infer.checkpoint import load_checkpoint
from pyro_gen.metrics import mode_coverage
from tests.reliability.run_fixtures import assert_one_line_error, cli

TINY = ["--epochs", "1", "--batch-size", "64", "--test-subset", "64", "--no-progress"]


def test_eight_gaussians_mixture_matches_the_dataset():
    # The command counts modes of pyro_gen.data's eight Gaussians with its own copy of their
    # means and spread: the data themselves must hit every mode, 98.9% within 3 sigma.
    x, _ = load("eight_gaussians", "test", num_samples=4000)
    cov = mode_coverage(x, *MIXTURES["eight_gaussians"])
    assert cov.modes == 8
    assert abs(cov.high_quality - (1 - torch.exp(torch.tensor(-4.5)).item())) < 0.01


def test_wgan_on_the_ring_trains_samples_and_counts_modes(tmp_path, capsys):
    run = tmp_path / "wgan"
    args = ["--loss", "wgan-clip", "--n-critic", "2", "--toy-samples", "256", *TINY]
    status, out, err = cli(capsys, "train", "wgan", "--data", "ring", *args, "--out", run)
    assert status == 0, err
    assert "test generator loss" in out
    saved = load_checkpoint(run / "checkpoint.pt")["modules"]
    # the critic and its optimizer are in the checkpoint; clipping held every weight
    assert saved["loss"]["class"].endswith("WassersteinGAN")
    critic = [v for k, v in saved["loss"]["state_dict"].items() if k.startswith("discriminator")]
    assert critic and all(float(w.abs().max()) <= 0.01 for w in critic)
    steps = int(saved["loss"]["state_dict"]["_extra_state"]["optimizer"]["state"][0]["step"])
    assert steps == 2 * 4  # two critic steps for each of the 256 / 64 generator steps

    status, _, err = cli(capsys, "evaluate", run, "-n", "400")
    assert status == 0, err
    results = json.loads((run / "evaluation.json").read_text())
    assert results["num_modes"] == 8 and 0 <= results["modes_captured"] <= 8
    assert 0 <= results["high_quality_share"] <= 1
    # scored on the 400 samples asked for, not the test set's size, with a binomial error
    assert results["num_samples"] == 400
    p = results["high_quality_share"]
    assert math.isclose(results["high_quality_share_se"], math.sqrt(p * (1 - p) / 400))
    assert cli(capsys, "sample", run, "-n", "16")[0] == 0
    generator = pyro_gen.load(run)
    assert generator.sample(5).shape == (5, 2)
    assert int(generator.average.num_updates) == 4  # the weight average followed every step

    status, _, err = cli(capsys, "sample", run, "--sampler", "ode")
    assert_one_line_error(status, err, "--sampler applies to ddpm, ncsn, sde runs (ode)")
    status, _, err = cli(capsys, "evaluate", run, "--probability-flow")
    assert_one_line_error(status, err, "--probability-flow", "a wgan run on ring")
    # scored by its own samples (-n), not by test examples
    status, _, err = cli(capsys, "evaluate", run, "--num-test", "10")
    assert_one_line_error(status, err, "--num-test", "takes -n/--num-samples")


def test_cgan_on_digits_reports_classifier_scores_and_label_agreement(tmp_path, capsys):
    run = tmp_path / "cgan"
    status, _, err = cli(capsys, "train", "cgan", "--data", "digits", "--subset", "128", *TINY,
                         "--out", run)  # fmt: skip
    assert status == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["num_classes"] == 10
    status, _, err = cli(capsys, "evaluate", run, "--num-test", "100", "--classifier-epochs", "1")
    assert status == 0, err
    results = json.loads((run / "evaluation.json").read_text())
    assert 0 <= results["label_agreement"] <= 1 and results["label_agreement_se"] > 0
    assert 1 <= results["classes_covered"] <= 10
    # training images score far closer to the test images than an epoch's samples do
    assert results["frechet_distance"] > results["frechet_distance_train_images"] >= 0
    model = pyro_gen.load(run)
    assert model.sample(4, y=torch.tensor([0, 1, 2, 3])).shape == (4, 8, 8)
    # one test image has no feature covariance: "each feature set needs at least 2 rows"
    status, _, err = cli(capsys, "evaluate", run, "--num-test", "1")
    assert_one_line_error(status, err, "--num-test 1", "--num-test 2 or more")


@pytest.mark.parametrize(
    "args, message",
    [
        (["gan", "--data", "moons", "--loss", "nosuchloss"], "invalid choice: 'nosuchloss'"),
        (["gan", "--data", "moons", "--loss", "wgan-gp"], "--loss wgan-gp does not apply to gan"),
        (["wgan", "--data", "ring", "--loss", "minimax"], "does not apply to wgan"),
        (["cgan", "--data", "moons"], "cgan trains on labelled data and moons has no labels"),
        (["gan", "--data", "ring", "--n-critic", "0"], "must be a positive integer"),
        (["gan", "--data", "ring", "--prior", "vamp"], "--prior is not an option of gan"),
        (["cyclegan", "--data", "moons"], "cyclegan models images"),
        (["gan", "--data", "ring", "--cycle-weight", "2"], "--cycle-weight is not an option"),
    ],
)
def test_bad_gan_options_are_one_line_errors(args, message, tmp_path, capsys):
    status, _, err = cli(capsys, "train", *args, "--out", tmp_path / "run")
    assert status == 2
    if "invalid choice" in message or "positive" in message:  # argparse's own line
        assert message in err and len(err.strip().splitlines()) == 1, err
    else:
        assert_one_line_error(status, err, message)


def test_cyclegan_translates_digits_and_scores_against_the_known_mapping(tmp_path, capsys):
    run = tmp_path / "cyclegan"
    args = ["--subset", "128", "--cycle-weight", "5", *TINY]
    status, out, err = cli(capsys, "train", "cyclegan", "--data", "digits", *args, "--out", run)
    assert status == 0, err
    assert "translators' loss" in out
    saved = load_checkpoint(run / "checkpoint.pt")["modules"]
    assert saved["loss"]["class"].endswith("CycleGANLoss")  # both discriminators saved
    status, _, err = cli(capsys, "evaluate", run, "--num-test", "64", "--classifier-epochs", "1")
    assert status == 0, err
    results = json.loads((run / "evaluation.json").read_text())
    x = load("digits", "test")[0][:64].float()[:, None] / 16
    identity = (x - torch.nn.functional.max_pool2d(x, 3, 1, 1)).abs().mean()
    assert results["l1_identity_to_true_mapping"] == pytest.approx(float(identity), abs=1e-6)
    assert 0 <= results["class_preservation"] <= 1 and results["cycle_error"] >= 0
    assert cli(capsys, "sample", run, "-n", "9")[0] == 0
    assert pyro_gen.load(run).translate(x[:3]).shape == (3, 1, 8, 8)
    # its samples translate test images: -n 1000 drew the 297 there and said "1000 samples"
    status, _, err = cli(capsys, "sample", run, "-n", "1000")
    assert_one_line_error(status, err, "-n 1000", "297 test images", "-n 297 or fewer")


def test_cgan_records_the_projection_discriminator_and_older_runs_rebuild_theirs():
    from pyro_gen.cli_models import run_options
    from pyro_gen.cli_models_gan import GAN_MODELS

    spec = GAN_MODELS["cgan"]
    new = {"z_dim": 8, "hidden_dim": 16, "loss": "nonsaturating", "num_classes": 10}
    assert spec.defaults["conditioning"] == "projection" and "conditioning" in spec.options
    # a run written before the option existed has no "conditioning" in its options: it was
    # trained with the label as input channels and must rebuild that network
    old = run_options({"model": "cgan", "options": new})
    loss = spec.loss((28, 28), old)
    assert loss.discriminator.conditioning == "concat" and loss.discriminator.embed is None
    current = spec.loss((28, 28), {**new, "conditioning": "projection"})
    assert current.discriminator.embed is not None
