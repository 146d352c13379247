"""End-to-end tests of the ``pyro-gen`` command on small data."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pyro.optim
import pytest
import torch

import pyro_gen
from pyro_gen.cli import main
from pyro_gen.cli_parser import build_parser
from pyro_gen.infer.checkpoint import load_checkpoint, save_checkpoint

SMALL_VAE = ["--z-dim", "4", "--hidden-dim", "32", "--batch-size", "64", "--no-progress"]


def test_train_evaluate_sample_resume(tmp_path, capsys):
    run = tmp_path / "vae"
    args = ["train", "vae", "--data", "digits", "--epochs", "1", "--out", str(run), *SMALL_VAE]
    assert main(args) == 0
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl", "samples.png", "curves.png"):
        assert (run / name).is_file(), name
    assert "run directory" in capsys.readouterr().out

    assert main(["evaluate", str(run), "--k", "20", "--num-test", "50"]) == 0
    results = json.loads((run / "evaluation.json").read_text())
    assert results["num_test"] == 50
    torch.manual_seed(123)  # whatever state the process is in, the run's seed decides
    assert main(["evaluate", str(run), "--k", "20", "--num-test", "50"]) == 0
    assert json.loads((run / "evaluation.json").read_text()) == results
    assert results["iwae_log_likelihood"] >= results["test_elbo"] - 1.0  # IWAE is the tighter bound

    assert main(["sample", str(run), "-n", "9", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    # --seed draws the same samples again; unseeded calls draw new ones
    pngs = {}
    for name, seed in (("a", ["--seed", "5"]), ("b", ["--seed", "5"]), ("c", [])):
        assert (
            main(["sample", str(run), "-n", "4", "--out", str(tmp_path / f"{name}.png"), *seed])
            == 0
        )
        pngs[name] = (tmp_path / f"{name}.png").read_bytes()
    assert pngs["a"] == pngs["b"] != pngs["c"]

    first = load_checkpoint(run / "checkpoint.pt")["modules"]["model"]["state_dict"]
    assert (
        main(["train", "vae", "--data", "digits", "--epochs", "2", "--out", str(run), *SMALL_VAE])
        == 0
    )
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    model = pyro_gen.load(run)
    assert not all(torch.equal(first[k], v) for k, v in model.state_dict().items())
    assert model.sample(3).shape == (3, 8, 8)


def test_resuming_with_other_options_is_refused(tmp_path, capsys):
    run = tmp_path / "vae"
    assert (
        main(["train", "vae", "--data", "digits", "--epochs", "1", "--out", str(run), *SMALL_VAE])
        == 0
    )
    capsys.readouterr()
    args = ["train", "vae", "--data", "digits", "--epochs", "2", "--out", str(run), "--z-dim", "5"]
    assert main(args) == 2
    assert "--z-dim 4; those change the model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "nosuchmodel", "--data", "digits"], "invalid choice"),
        (["train", "vae", "--data", "nosuchdata"], "invalid choice"),
        (["train", "vae", "--data", "digits", "--epochs", "-3"], "non-negative"),
        (["evaluate", "/nonexistent/run"], "does not exist"),
        (["sample", "/nonexistent/run"], "does not exist"),
        (["train", "vae", "--data", "moons"], "models images"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(args, message, capsys):
    status = main(args)
    err = capsys.readouterr().err
    assert status != 0
    assert message in err
    assert len(err.strip().splitlines()) == 1, err


def test_checkpoint_of_another_model_gives_clear_error(tmp_path, capsys):
    run = tmp_path / "vae"
    assert (
        main(["train", "vae", "--data", "digits", "--epochs", "0", "--out", str(run), *SMALL_VAE])
        == 0
    )
    config = json.loads((run / "config.json").read_text())
    assert not (run / "checkpoint.pt").exists()
    # A valid checkpoint of a VAE under a config that names another model.
    vae = pyro_gen.cli.build_model(config)
    save_checkpoint(run / "checkpoint.pt", modules={"model": vae}, optim=pyro.optim.Adam({}))
    config["model"], config["options"] = (
        "ddpm",
        {
            "schedule": "linear",
            "param": "eps",
            "diffusion_objective": "elbo",
            "timesteps": 10,
            "ema_decay": 0,
        },
    )
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["evaluate", str(run), "--num-test", "2"]) == 2
    err = capsys.readouterr().err
    assert "is a pyro_gen.vae" in err and "not a pyro_gen.diffusion" in err, err


def test_every_option_of_every_command_has_help_stating_its_default():
    # sample's -n had no help at all (its default of 64 unstated), evaluate's --num-test did
    # not say that it defaults to the whole test set
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            where = f"{name} {action.option_strings[-1]}"
            assert action.help, f"{where} has no help"
            if action.default not in (None, False, argparse.SUPPRESS) or where.endswith(
                "--num-test"
            ):
                assert "default" in action.help, f"{where} does not state its default"


def test_help_documents_every_option():
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_gen", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    for option in (
        "--data",
        "--epochs",
        "--device",
        "--out",
        "--prior",
        "--guide",
        "--schedule",
        "--loss",
        "--n-critic",
        "--sde",
        "--weighting",
        "--missing-rate",
        "--labels",
    ):
        assert option in proc.stdout


def test_hierarchical_vae_with_the_autoguide_trains_resumes_and_loads(tmp_path, capsys):
    # --layers 2 --guide auto was refused ("has its own top-down guide") though the
    # autoguide works on the hierarchical model like on the one-layer one
    run = tmp_path / "hvae"
    args = ["train", "vae", "--data", "digits", "--layers", "2", "--guide", "auto",
            "--subset", "128", "--test-subset", "64", "--out", str(run), *SMALL_VAE]  # fmt: skip
    assert main([*args, "--epochs", "1"]) == 0
    assert main([*args, "--epochs", "2"]) == 0  # resumes into the autoguide's weights
    saved = load_checkpoint(run / "checkpoint.pt")["modules"]["model"]["state_dict"]
    encoder = {k: v for k, v in saved.items() if k.startswith("custom_guide.")}
    assert encoder and not any(k.startswith("encoders.") for k in saved)
    model = pyro_gen.load(run)
    assert type(model.guide).__name__ == "AutoAmortizedNormal"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in encoder.items())
    assert main(["evaluate", str(run), "--k", "5", "--num-test", "32"]) == 0


@pytest.mark.parametrize(
    "model, data, extra",
    [
        ("realnvp", "moons", []),
        ("maf", "eight_gaussians", []),
        ("nsf", "moons", []),
        # the compiled step's tracing of eight residual blocks takes seconds: not for 2 steps
        ("resflow", "moons", ["--toy-samples", "128", "--no-compile"]),
        ("nice", "digits", ["--subset", "64"]),
        ("glow", "digits", ["--subset", "64", "--dequantization", "variational"]),
        ("cnf", "moons", []),
        ("ddpm", "moons", ["--timesteps", "20", "--schedule", "cosine", "--param", "v"]),
        ("ddpm", "digits", ["--timesteps", "10", "--subset", "64"]),
    ],
)
def test_every_model_family_trains_and_samples(model, data, extra, tmp_path, capsys):
    run = tmp_path / model
    args = ["train", model, "--data", data, "--epochs", "1", "--out", str(run), "--no-progress"]
    args += ["--test-subset", "64", "--batch-size", "64", *extra]
    if data != "digits" and "--toy-samples" not in extra:
        args += ["--toy-samples", "256"]
    assert main(args) == 0
    out = capsys.readouterr().out
    if data == "digits":
        assert "bits/dim" in out
    assert (run / "samples.png").stat().st_size > 0
    assert main(["sample", str(run), "-n", "8"]) == 0
    loaded = pyro_gen.load(run)
    assert torch.isfinite(loaded.sample(4)).all()


def test_ddpm_keeps_a_weight_average_that_follows_every_step_and_is_saved(tmp_path, capsys):
    run = tmp_path / "ddpm"
    args = ["train", "ddpm", "--data", "moons", "--epochs", "1", "--out", str(run),
            "--no-progress", "--toy-samples", "256", "--test-subset", "64", "--batch-size",
            "64", "--timesteps", "10", "--ema-decay", "0.9"]  # fmt: skip
    assert main(args) == 0
    loaded = pyro_gen.load(run)
    assert int(loaded.ema.num_updates) == 4  # 256 examples / 64 per step
    live = [p.detach().clone() for p in loaded.net.parameters()]
    with loaded.ema.average_parameters():  # the restored average, not the live weights
        averaged = [p.detach().clone() for p in loaded.net.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(averaged, live))
    assert main([*args[:7], str(tmp_path / "none"), *args[8:-1], "0"]) == 0
    assert pyro_gen.load(tmp_path / "none").ema is None


def test_eval_every_scores_the_held_out_data_after_every_nth_epoch_and_the_last(tmp_path, capsys):
    """A DDPM's held-out bound costs several training epochs on images: --eval-every thins
    it out, and the record, the curve and the summary take the epochs that were scored."""
    run = tmp_path / "ddpm"
    args = ["train", "ddpm", "--data", "moons", "--out", str(run), "--no-progress",
            "--no-compile", "--toy-samples", "128", "--test-subset", "32", "--batch-size", "64",
            "--timesteps", "10", "--eval-every", "2"]  # fmt: skip
    assert main([*args, "--epochs", "3"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "test_elbo" in r] == [2, 3]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert "test ELBO" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["eval_every"] == 2
    # resumed as recorded: the fourth epoch is the last, so it is scored
    assert main([*args[:-2], "--epochs", "4"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "test_elbo" in r] == [2, 3, 4]


def test_ema_decay_out_of_range_is_one_clear_error(tmp_path, capsys):
    args = ["train", "ddpm", "--data", "moons", "--ema-decay", "1.5", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "must lie in (0, 1)" in capsys.readouterr().err


def test_curves_label_the_training_objective_apart_from_the_held_out_elbo(tmp_path, monkeypatch):
    # With --objective iwae the training curve is the IWAE bound while fit's test_elbo is the
    # ELBO; both were labelled "ELBO".
    import matplotlib.pyplot as plt

    from pyro_gen import plotting
    from pyro_gen.cli_models import MODELS

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    train_bound = MODELS["vae"].train_bound({"objective": "iwae", "k": 5})
    history = [{"epoch": 1, "train_loss": 30.0, "test_elbo": -31.0}]
    plotting.save_curves(history, tmp_path / "curves.png", "ELBO", train_bound)
    labels = figures[0].axes[0].get_legend_handles_labels()[1]
    assert labels == ["train IWAE bound (k=5) / example", "test ELBO / example"]
    assert MODELS["vae"].train_bound({"objective": "elbo", "k": 50}) is None


def test_curves_of_an_adversarial_loss_show_the_loss_and_whole_epochs(tmp_path, monkeypatch):
    # A GAN's curve was labelled "train generator loss" but drew minus the loss (0.68 as
    # -0.68), in "nats", without its held-out test_loss; epochs were ticked 1.2, 1.4, ...
    import matplotlib.pyplot as plt

    from pyro_gen import plotting
    from pyro_gen.cli_models import MODELS

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    history = [{"epoch": e, "train_loss": 0.6 + e / 10, "test_loss": 0.5 + e / 10} for e in (1, 2)]
    loss = MODELS["gan"].bound_is_loss and MODELS["cyclegan"].bound_is_loss
    plotting.save_curves(history, tmp_path / "c.png", "generator loss", is_loss=loss)
    ax = figures[0].axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines == {
        "train generator loss / example": [0.7, 0.8],
        "test generator loss / example": [0.6, 0.7],
    }
    assert ax.get_ylabel() == "loss per example"
    assert all(float(t).is_integer() for t in ax.get_xticks())
    # an ELBO is drawn as it is, in nats; a model's own objective stays negated (an ELBO)
    assert not MODELS["vae"].bound_is_loss and not MODELS["sde"].bound_is_loss
    elbo = [{"epoch": e, "train_loss": 30.0, "test_elbo": -31.0} for e in (1, 2)]
    plotting.save_curves(elbo, tmp_path / "e.png")
    assert figures[1].axes[0].get_ylabel() == "nats per example"
    assert [list(line.get_ydata()) for line in figures[1].axes[0].get_lines()] == [
        [-30.0, -30.0],
        [-31.0, -31.0],
    ]


def test_scatter_plots_hand_matplotlib_arrays_not_tensors(tmp_path, recwarn):
    # torch tensors given to pcolormesh and scatter made NumPy 2 warn ("__array__
    # implementation doesn't accept a copy keyword") on every sample of a 2D model
    from pyro_gen import plotting

    points = torch.randn(50, 2)
    log_prob = torch.distributions.Normal(0.0, 1.0).log_prob
    plotting.save_scatter(points, tmp_path / "s.png", lambda x: log_prob(x).sum(-1))
    assert (tmp_path / "s.png").stat().st_size > 0
    assert [str(w.message) for w in recwarn] == []


def test_evaluate_shows_progress_unless_asked_not_to(tmp_path, capsys):
    # K=1000 on MNIST took over 4 minutes without a word
    from tests.reliability.run_fixtures import cli, trained_run

    run = trained_run(tmp_path)
    status, _, err = cli(capsys, "evaluate", run, "--k", "4", "--num-test", "8")
    assert status == 0 and "evaluate_elbo" in err and "iwae_log_likelihood" in err, err
    status, _, err = cli(capsys, "evaluate", run, "--k", "4", "--num-test", "8", "--no-progress")
    assert status == 0 and err == "", err
