"""``pyro-gen train ncsn|sde``, ``cnf --objective flow-matching`` and the score-based samplers
(also for the DDPM) end to end on tiny data."""

from __future__ import annotations

import json

import pyro
import pytest
import torch

import pyro_gen
from pyro_gen.cli_models import load_split
from pyro_gen.data import toy_log_prob
from pyro_gen.diffusion import sampled_variational_bound, variational_bound
from tests.reliability.run_fixtures import assert_one_line_error, cli

TINY = ["--epochs", "1", "--batch-size", "64", "--toy-samples", "256", "--no-progress",
        "--no-compile"]  # fmt: skip


def _test_points(run) -> torch.Tensor:
    config = json.loads((run / "config.json").read_text())
    return load_split(config["data"], "test", config, 16)[0]


def test_sde_trains_samples_with_every_sampler_and_reports_the_ode_likelihood(tmp_path, capsys):
    run = tmp_path / "sde"
    status, out, err = cli(capsys, "train", "sde", "--data", "eight_gaussians", "--sde", "subvp",
                           "--weighting", "likelihood", *TINY, "--out", run)  # fmt: skip
    assert status == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["options"] == {"sde": "subvp", "weighting": "likelihood", "hidden_dim": 128}
    model = pyro_gen.load(run)
    assert type(model.sde).__name__ == "SubVPSDE"
    for sampler in ("langevin", "euler-maruyama", "pc", "ode"):
        steps = [] if sampler == "ode" else ["--steps", "5"]  # the ODE solver is adaptive
        status, _, err = cli(capsys, "sample", run, "-n", "8", "--sampler", sampler, *steps)
        assert status == 0, (sampler, err)
    status, _, err = cli(capsys, "evaluate", run, "--num-test", "16")
    assert status == 0, err
    results = json.loads((run / "evaluation.json").read_text())
    # the KL is against the toy's known density at the same 16 test points
    truth = float(toy_log_prob("eight_gaussians", _test_points(run)).mean())
    kl = truth - results["test_log_likelihood"]
    assert results["kl_true_to_model"] == pytest.approx(kl, abs=1e-4)
    assert results["num_test"] == 16 and results["test_log_likelihood_se"] > 0

    status, _, err = cli(capsys, "sample", run, "--sampler", "ddim")
    assert_one_line_error(status, err, "--sampler applies to ddpm runs (ddim)", "it takes langevin")


def test_ncsn_defaults_to_the_ve_sde(tmp_path, capsys):
    run = tmp_path / "ncsn"
    args = ["train", "ncsn", "--data", "moons", *TINY, "--epochs", "0", "--out", run]
    status, _, err = cli(capsys, *args)
    assert status == 0, err
    assert json.loads((run / "config.json").read_text())["options"]["sde"] == "ve"


def test_flow_matching_cnf_reports_its_exact_likelihood(tmp_path, capsys):
    run = tmp_path / "fm"
    status, out, err = cli(capsys, "train", "cnf", "--data", "moons", "--objective",
                           "rectified", *TINY, "--out", run)  # fmt: skip
    assert status == 0, err
    model = pyro_gen.load(run)
    assert type(model).__name__ == "FlowMatching" and model.objective == "rectified"
    nets = {type(m).__name__ for m in model.modules()}
    assert "ODETimeMLP" in nets and "ODEMLP" not in nets  # flow matching's default net
    status, _, err = cli(capsys, "evaluate", run, "--num-test", "16")
    assert status == 0, err
    results = json.loads((run / "evaluation.json").read_text())
    lp = model.log_prob(_test_points(run))
    assert results["test_log_likelihood"] == pytest.approx(float(lp.mean()), abs=1e-3)
    assert "kl_true_to_model" not in results  # moons have no closed-form density

    status, _, err = cli(capsys, "train", "cnf", "--data", "moons", "--objective", "ml",
                         *TINY, "--out", run)  # fmt: skip
    assert_one_line_error(status, err, "--objective rectified", "those change the model")

    # A run written before --velocity-net (FFJORD's net) still rebuilds and loads.
    config = json.loads((run / "config.json").read_text())
    del config["options"]["velocity_net"]
    (run / "config.json").write_text(json.dumps(config))
    old = tmp_path / "old"
    status, _, err = cli(capsys, "train", "cnf", "--data", "moons", "--objective", "rectified",
                         "--velocity-net", "concat_squash", *TINY, "--out", old)  # fmt: skip
    assert status == 0, err
    config = json.loads((old / "config.json").read_text())
    del config["options"]["velocity_net"]
    (old / "config.json").write_text(json.dumps(config))
    assert "ODEMLP" in {type(m).__name__ for m in pyro_gen.load(old).modules()}


def test_ddpm_samples_with_the_score_samplers_and_gives_its_ode_likelihood(tmp_path, capsys):
    run = tmp_path / "ddpm"
    status, _, err = cli(capsys, "train", "ddpm", "--data", "moons", "--timesteps", "10",
                         *TINY, "--out", run)  # fmt: skip
    assert status == 0, err
    assert cli(capsys, "sample", run, "-n", "8", "--sampler", "pc", "--steps", "5")[0] == 0
    status, out, err = cli(capsys, "evaluate", run, "--k", "4", "--num-test", "16")
    assert_one_line_error(status, err, "--k", "a ddpm run on moons")  # its bound has no IWAE
    status, out, err = cli(capsys, "evaluate", run, "--num-test", "16", "--probability-flow")
    assert status == 0, err
    results = json.loads((run / "evaluation.json").read_text())
    assert torch.isfinite(torch.tensor(results["probability_flow_log_likelihood"]))
    # The time plate's joint is an estimate of the bound, not a density: exponentiated as an
    # importance weight it read +539 nats beside a test ELBO of -2.9 on moons; no IWAE here.
    assert "test_elbo" in results and "iwae_log_likelihood" not in results


@pytest.mark.parametrize(
    "args, message",
    [
        (["cnf", "--data", "digits", "--objective", "flow-matching"], "on 2D toy data"),
        (["cnf", "--data", "digits", "--velocity-net", "time_mlp"], "image CNFs use a conv net"),
        (["realnvp", "--data", "moons", "--velocity-net", "time_mlp"], "not an option of"),
        (["vae", "--data", "digits", "--objective", "rectified"], "does not apply to vae"),
        (["realnvp", "--data", "moons", "--objective", "ml"], "not an option of realnvp"),
        (["sde", "--data", "moons", "--sde", "nosuch"], "invalid choice: 'nosuch'"),
    ],
)
def test_bad_score_options_are_one_line_errors(args, message, tmp_path, capsys):
    status, _, err = cli(capsys, "train", *args, "--epochs", "0", "--out", tmp_path / "run")
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


def _evaluated_ddpm(run, capsys, *train_args):
    """Trains a DDPM on moons with ``train_args``, evaluates it on 64 test points and gives
    (train's output, evaluation.json, the model, the test points), the RNG seeded as
    evaluate seeded it for its draws of steps and x_t."""
    status, out, err = cli(capsys, "train", "ddpm", "--data", "moons", *train_args, *TINY,
                           "--out", run)  # fmt: skip
    assert status == 0, err
    status, _, err = cli(capsys, "evaluate", run, "--num-test", "64")
    assert status == 0, err
    results = json.loads((run / "evaluation.json").read_text())
    config = json.loads((run / "config.json").read_text())
    x = load_split(config["data"], "test", config, 64)[0]
    model = pyro_gen.load(run)
    pyro.set_rng_seed(config["seed"])
    return out, results, model, x


def _assert_reports(results, bound):
    assert results["test_elbo"] == pytest.approx(float(bound.mean()), rel=1e-6)
    assert results["test_elbo_se"] == pytest.approx(float(bound.std() / 8), rel=1e-6)


def test_a_ddpm_trained_on_l_simple_is_labelled_so_and_evaluated_by_its_bound(tmp_path, capsys):
    # Its held-out number is the negated L_simple (reweighted terms, no decoder), which train
    # printed as "test ELBO -12.38" and evaluate as test_elbo -17.6 where the DDPM's bound,
    # every term computed, was -403 nats on moons
    out, results, model, x = _evaluated_ddpm(
        tmp_path / "simple", capsys, "--timesteps", "4", "--diffusion-objective", "simple"
    )
    assert "test negated L_simple (not a bound)" in out and "ELBO" not in out, out
    # every term of the bound, not the time plate's one sampled step per example, whose
    # standard error was 33 times larger on moons
    _assert_reports(results, -variational_bound(model, x)["total"].double())
    assert model.objective == "simple"


def test_a_ddpm_with_many_steps_is_evaluated_by_the_stratified_bound(tmp_path, capsys):
    """Above 17 steps the whole bound costs T network passes per test example (hours for an
    MNIST DDPM on a CPU): evaluate reports sampled_variational_bound's unbiased estimate,
    17 passes per example."""
    _, results, model, x = _evaluated_ddpm(tmp_path / "ddpm", capsys, "--timesteps", "40")
    assert results["bound_passes_per_example"] == 17
    _assert_reports(results, -sampled_variational_bound(model, x, strata=16)["total"].double())
