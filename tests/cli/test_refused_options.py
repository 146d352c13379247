"""Options that a run's model would not read are refused, one line each, for every model
family: ``evaluate``'s options by what each family's evaluation reads, ``train``'s by what
the chosen options and data build, ``sample --steps`` by the sampler. Options that do apply
still pass.

The runs here are set up with ``--epochs 0`` (settings only, no training): every refusal
happens before a checkpoint is read, and an option that applies gets past the check to the
missing checkpoint.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from pyro_gen.cli_models import MODELS
from pyro_gen.cli_spec import EVALUATE_OPTIONS
from tests.reliability.run_fixtures import assert_one_line_error, cli

# evaluate's options as a user types them
TYPED = {
    "k": ["--k", "3"],
    "num_test": ["--num-test", "5"],
    "num_samples": ["-n", "7"],
    "classifier_epochs": ["--classifier-epochs", "1"],
    "probability_flow": ["--probability-flow"],
}
SMALL_TOY = ["--toy-samples", "64"]

# A run of every model family (and of each family on both kinds of data where what its
# evaluation reads differs), with the evaluate options that change what evaluate does, read
# from the code paths of cli_evaluate and the cli_models_* files:
# - k: the IWAE over a model's latents: a VAE's; a flow's dequantization noise on images (on
#   2D data a flow has no latent: its ELBO is the exact log-likelihood). Not ssvae (test
#   error and ELBO), not the DDPM (its bound has no IWAE), not the ODE densities, not GANs.
# - num_test: the held-out examples scored; not for GANs on 2D data, scored by their own
#   samples, where -n (num_samples) says how many.
# - classifier_epochs: GANs and CycleGAN on images; probability_flow: the DDPM.
RUNS: dict[str, tuple[str, str, list[str], set[str]]] = {
    "vae-digits": ("vae", "digits", [], {"k", "num_test"}),
    "ssvae-digits": ("ssvae", "digits", [], {"num_test"}),
    **{
        f"{flow}-{data}": (flow, data, SMALL_TOY if data == "moons" else [], honoured)
        for flow in ("nice", "realnvp", "glow", "maf", "nsf", "resflow", "cnf")
        for data, honoured in (("digits", {"k", "num_test"}), ("moons", {"num_test"}))
    },
    "cnf-moons-flow-matching": (
        "cnf", "moons", [*SMALL_TOY, "--objective", "flow-matching"], {"num_test"}
    ),
    "ddpm-moons": ("ddpm", "moons", [*SMALL_TOY, "--timesteps", "10"],
                   {"num_test", "probability_flow"}),
    "ddpm-digits": ("ddpm", "digits", ["--timesteps", "10"], {"num_test", "probability_flow"}),
    "ncsn-moons": ("ncsn", "moons", SMALL_TOY, {"num_test"}),
    "sde-digits": ("sde", "digits", [], {"num_test"}),
    "gan-ring": ("gan", "ring", SMALL_TOY, {"num_samples"}),
    "wgan-eight_gaussians": ("wgan", "eight_gaussians", SMALL_TOY, {"num_samples"}),
    "gan-digits": ("gan", "digits", [], {"num_test", "classifier_epochs"}),
    "cgan-digits": ("cgan", "digits", [], {"num_test", "classifier_epochs"}),
    "cyclegan-digits": ("cyclegan", "digits", [], {"num_test", "classifier_epochs"}),
}  # fmt: skip


@functools.cache
def _runs_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="pyro-gen-refused-options-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.cache
def _settings_only_run(name: str) -> Path:
    """The run RUNS[name] set up with --epochs 0 (once per session): config.json only."""
    from pyro_gen.cli import main

    model, data, options, _ = RUNS[name]
    run = _runs_root() / name
    args = ["train", model, "--data", data, "--epochs", "0", "--no-progress", *options]
    assert main([*args, "--out", str(run)]) == 0
    return run


def _files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name != ".pyro-gen.lock")


def test_every_model_family_is_in_the_table():
    assert {model for model, *_ in RUNS.values()} == set(MODELS)
    assert set(TYPED) == set(EVALUATE_OPTIONS)


def test_the_table_is_what_each_model_declares():
    # RUNS is the decision written down from the code paths; each spec's declaration must
    # match it (and test_evaluate_options checks the declarations against what is read)
    from pyro_gen.cli_models import run_options

    for name, (model, data, _, honoured) in RUNS.items():
        config = json.loads((_settings_only_run(name) / "config.json").read_text())
        declared = MODELS[model].evaluate_options(run_options(config), data)
        assert set(declared) == honoured, name


REFUSED = [(run, option) for run, r in RUNS.items() for option in TYPED if option not in r[3]]
HONOURED = [(run, option) for run, r in RUNS.items() for option in sorted(r[3])]


@pytest.mark.parametrize(("run_name", "option"), REFUSED, ids=[f"{r}:{o}" for r, o in REFUSED])
def test_evaluate_refuses_an_option_the_evaluation_does_not_read(run_name, option, capsys):
    run = _settings_only_run(run_name)
    before = _files(run)
    status, _, err = cli(capsys, "evaluate", run, *TYPED[option])
    model, data, _, honoured = RUNS[run_name]
    flag = TYPED[option][0]
    assert_one_line_error(status, err, flag, "does not apply to", f"a {model} run on {data}")
    # the message names what this run's evaluation does take
    for other in honoured:
        assert TYPED[other][0].lstrip("-") in err, (other, err)
    assert _files(run) == before  # refused before anything was written


@pytest.mark.parametrize(("run_name", "option"), HONOURED, ids=[f"{r}:{o}" for r, o in HONOURED])
def test_evaluate_takes_an_option_the_evaluation_reads(run_name, option, capsys):
    status, _, err = cli(capsys, "evaluate", _settings_only_run(run_name), *TYPED[option])
    # past the option check, to the checkpoint an --epochs 0 run does not have
    assert_one_line_error(status, err, "has no checkpoint.pt", "no epoch has finished")


# ---------------------------------------------------------------------------------------
# train: options the chosen options and data do not read


TRAIN_REFUSED = {
    # image score models have a U-Net of fixed width; 28x28 GANs DCGAN networks
    "hidden_dim_ncsn_digits": (["ncsn", "--data", "digits", "--hidden-dim", "8"],
                               ("--hidden-dim", "U-Net")),
    "hidden_dim_sde_digits": (["sde", "--data", "digits", "--hidden-dim", "8"],
                              ("--hidden-dim", "U-Net")),
    "hidden_dim_gan_mnist": (["gan", "--data", "mnist", "--hidden-dim", "8"],
                             ("--hidden-dim", "DCGAN")),
    "hidden_dim_cgan_fashion": (["cgan", "--data", "fashion_mnist", "--hidden-dim", "8"],
                                ("--hidden-dim", "DCGAN")),
    # image CNFs have a conv net, whatever --velocity-net says
    "velocity_net_cnf_digits": (["cnf", "--data", "digits", "--velocity-net", "concat_squash"],
                                ("--velocity-net", "2D data")),
    # fit scores no held-out split for these
    "test_subset_ncsn": (["ncsn", "--data", "moons", "--test-subset", "4"],
                         ("--test-subset", "--num-test")),
    "test_subset_sde": (["sde", "--data", "digits", "--test-subset", "4"], ("--test-subset",)),
    "test_subset_flow_matching": (
        ["cnf", "--data", "moons", "--objective", "rectified", "--test-subset", "4"],
        ("--test-subset",),
    ),
    "eval_every_ncsn": (["ncsn", "--data", "moons", "--eval-every", "2"],
                        ("--eval-every", "scores none")),
    "k_with_meanfield": (["vae", "--data", "digits", "--objective", "meanfield", "--k", "4"],
                         ("--k applies only with --objective iwae",)),
}  # fmt: skip

TRAIN_TAKEN = {
    "hidden_dim_ncsn_moons": (["ncsn", "--data", "moons", "--hidden-dim", "8"], "hidden_dim", 8),
    "hidden_dim_gan_digits": (["gan", "--data", "digits", "--hidden-dim", "8"], "hidden_dim", 8),
    "velocity_net_cnf_moons": (["cnf", "--data", "moons", "--velocity-net", "concat_squash"],
                               "velocity_net", "concat_squash"),
    "test_subset_cnf_ml": (["cnf", "--data", "moons", "--test-subset", "4"], "test_subset", 4),
    "test_subset_ddpm": (["ddpm", "--data", "moons", "--test-subset", "4"], "test_subset", 4),
    "test_subset_gan": (["gan", "--data", "ring", "--test-subset", "4"], "test_subset", 4),
    "k_with_iwae": (["vae", "--data", "digits", "--objective", "iwae", "--k", "4"], "k", 4),
    "eval_every_ddpm": (["ddpm", "--data", "moons", "--eval-every", "3"], "eval_every", 3),
}  # fmt: skip


@pytest.mark.parametrize("name", list(TRAIN_REFUSED))
def test_train_refuses_an_option_the_run_would_not_read(name, tmp_path, capsys):
    args, expect = TRAIN_REFUSED[name]
    out = tmp_path / "run"
    status, _, err = cli(capsys, "train", *args, "--epochs", "0", "--out", out)
    assert_one_line_error(status, err, *expect, "drop it")
    assert not out.exists()  # refused before the run directory was made


@pytest.mark.parametrize("name", list(TRAIN_TAKEN))
def test_train_records_an_option_the_run_reads(name, tmp_path, capsys):
    args, key, value = TRAIN_TAKEN[name]
    out = tmp_path / "run"
    status, _, err = cli(capsys, "train", *args, *(SMALL_TOY if "digits" not in args else []),
                         "--epochs", "0", "--no-progress", "--out", out)  # fmt: skip
    assert status == 0, err
    config = json.loads((out / "config.json").read_text())
    assert {**config, **config["options"]}[key] == value


def test_a_resume_is_refused_an_option_its_recorded_options_make_unread(tmp_path, capsys):
    # the recorded --objective flow-matching, not given again, decides
    out = tmp_path / "run"
    args = ["train", "cnf", "--data", "moons", *SMALL_TOY, "--no-progress", "--out", out]
    assert cli(capsys, *args, "--objective", "flow-matching", "--epochs", "0")[0] == 0
    before = (out / "config.json").read_bytes()
    status, _, err = cli(capsys, *args, "--epochs", "1", "--test-subset", "4")
    assert_one_line_error(status, err, "--test-subset", "drop it")
    assert (out / "config.json").read_bytes() == before


# ---------------------------------------------------------------------------------------
# sample: --steps where the sampler picks its own


@pytest.mark.parametrize("run_name", ["ddpm-moons", "ncsn-moons", "sde-digits"])
def test_sample_refuses_steps_for_the_adaptive_ode_sampler(run_name, capsys):
    run = _settings_only_run(run_name)
    status, _, err = cli(capsys, "sample", run, "--sampler", "ode", "--steps", "5")
    assert_one_line_error(status, err, "--steps does not apply to --sampler ode", "pc")
    status, _, err = cli(capsys, "sample", run, "--sampler", "pc", "--steps", "5")
    assert_one_line_error(status, err, "has no checkpoint.pt")  # past the option check
