"""``pyro-gen train|evaluate`` on flows: what the numbers are called."""

from __future__ import annotations

import json

import pytest
import torch

import pyro_gen
from pyro_gen.cli_evaluate import samples_latents
from pyro_gen.cli_models import load_split
from pyro_gen.data import toy_log_prob
from pyro_gen.flows import build as build_flow
from tests.reliability.run_fixtures import assert_one_line_error, cli

TINY = ["--epochs", "1", "--batch-size", "64", "--toy-samples", "256", "--test-subset", "16",
        "--no-progress", "--no-compile"]  # fmt: skip


def test_a_flow_on_vectors_reports_its_exact_log_likelihood_not_an_elbo(tmp_path, capsys):
    # Its guide samples nothing, so evaluate_elbo is log p(x) itself: "test ELBO" and an
    # "IWAE" equal to it to the last digit were printed, as if they were bounds.
    run = tmp_path / "flow"
    status, out, err = cli(capsys, "train", "realnvp", "--data", "eight_gaussians", *TINY,
                           "--out", run)  # fmt: skip
    assert status == 0, err
    assert "test exact log-likelihood" in out and "ELBO" not in out, out
    config = json.loads((run / "config.json").read_text())
    assert config["test_elbo_is"] == "exact log-likelihood"  # what metrics.jsonl's key holds
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    # nothing to weight: --k is refused rather than ignored
    status, out, err = cli(capsys, "evaluate", run, "--k", "3", "--num-test", "16")
    assert_one_line_error(status, err, "--k", "does not apply", "takes --num-test")
    status, out, err = cli(capsys, "evaluate", run, "--num-test", "16")
    assert status == 0, err
    assert "elbo" not in out.lower() and "iwae" not in out.lower(), out
    results = json.loads((run / "evaluation.json").read_text())
    x = load_split(config["data"], "test", config, 16)[0]  # fit's held-out points too
    with torch.no_grad():
        lp = pyro_gen.load(run).log_prob(x).double()
    assert results["test_log_likelihood"] == pytest.approx(float(lp.mean()), abs=1e-4)
    assert results["test_log_likelihood"] == pytest.approx(record["test_elbo"], abs=1e-4)
    truth = toy_log_prob("eight_gaussians", x).double()
    assert results["kl_true_to_model"] == pytest.approx(float((truth - lp).mean()), abs=1e-4)
    # one test example has no standard error: it was written as NaN, which is not JSON
    status, out, err = cli(capsys, "evaluate", run, "--num-test", "1")
    assert status == 0, err
    assert "test_log_likelihood_se: n/a" in out, out
    text = (run / "evaluation.json").read_text()
    results = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text}"))
    assert results["test_log_likelihood_se"] is None
    assert results["test_log_likelihood"] == pytest.approx(float(lp[0]), abs=1e-4)


def test_only_a_flow_without_dequantization_has_no_latents():
    vectors = torch.randn(4, 2)
    assert not samples_latents(build_flow("realnvp", (2,)), vectors)
    pixels = torch.randint(0, 17, (4, 8, 8)).float()
    # dequantization noise is a latent: its ELBO bounds the discrete likelihood
    assert samples_latents(build_flow("realnvp", (8, 8), dequantization="uniform"), pixels)
