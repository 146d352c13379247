"""Each model's ``evaluate_options`` (the ``evaluate`` options its evaluation honours, the
others refused) is what its evaluation actually reads: every family's evaluation runs on an
untrained model with arguments that record which options are read.

``--num-test`` is not read by an evaluation (``evaluate`` cuts the held-out split to it
before); test_refused_options holds the decision for it.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from pyro_gen.cli_evaluate import bound_results, samples_latents
from pyro_gen.cli_models import MODELS, build_model, held_out_view, run_options
from pyro_gen.cli_spec import EVALUATE_OPTIONS, Evaluation
from tests.reliability.run_fixtures import cli


class _Recording(argparse.Namespace):
    """``evaluate``'s arguments, noting each one read."""

    def __getattribute__(self, name: str):
        if name in EVALUATE_OPTIONS:
            object.__getattribute__(self, "__dict__").setdefault("_read", set()).add(name)
        return object.__getattribute__(self, name)


# (model, data, train options); the image evaluations whose ODE solves take long (the
# DDPM's and score models' on images: 20 s each) are left out: what they read does not
# depend on the data.
CASES = [
    ("vae", "digits", []),
    ("ssvae", "digits", []),
    ("realnvp", "digits", []),
    ("realnvp", "moons", []),
    ("cnf", "moons", []),
    ("cnf", "moons", ["--objective", "flow-matching"]),
    ("ddpm", "moons", ["--timesteps", "8"]),
    ("ncsn", "moons", ["--hidden-dim", "16"]),
    ("sde", "moons", ["--hidden-dim", "16"]),
    ("gan", "ring", []),
    ("cgan", "digits", []),
    ("cyclegan", "digits", []),
]


@pytest.mark.parametrize(
    ("model", "data", "options"), CASES, ids=["-".join([m, d, *o[1:2]]) for m, d, o in CASES]
)
def test_an_evaluation_reads_exactly_the_options_its_model_declares(
    model, data, options, tmp_path, capsys
):
    run = tmp_path / "run"
    args = ["train", model, "--data", data, "--epochs", "0", "--no-progress", "--out", run]
    status, _, err = cli(capsys, *args, "--toy-samples", "64", *options)
    if status != 0:  # images take no --toy-samples
        status, _, err = cli(capsys, *args, *options)
    assert status == 0, err
    config = json.loads((run / "config.json").read_text())
    spec = MODELS[model]
    view, labels = held_out_view(config, 4)
    torch.manual_seed(0)
    net = build_model(config).eval()
    recorded = _Recording(
        k=2, num_test=4, num_samples=16, classifier_epochs=1, probability_flow=True,
        no_progress=True,
    )  # fmt: skip
    ev = Evaluation(net, config, view, labels, recorded)
    if spec.evaluate is None:
        bound_results(ev, spec.discrete(run_options(config)))
    else:
        spec.evaluate(ev)
    read = vars(recorded).get("_read", set())
    declared = set(spec.evaluate_options(run_options(config), data))
    assert read <= declared, f"{model} on {data} reads {read - declared} undeclared"
    assert declared - {"num_test"} <= read, f"{model} on {data} ignores {declared - read}"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_k_is_declared_only_where_the_model_has_latents_to_weight(model, tmp_path, capsys):
    # the IWAE weights latents: where a model has none (a flow on 2D data) --k is refused
    spec = MODELS[model]
    for data in ("digits", "moons"):
        if (spec.images_only and data == "moons") or (spec.labelled and data == "moons"):
            continue
        run = tmp_path / f"{model}-{data}"
        args = ["train", model, "--data", data, "--epochs", "0", "--no-progress", "--out", run]
        toy = ["--toy-samples", "64"] if data == "moons" else []
        status, _, err = cli(capsys, *args, *toy)
        assert status == 0, err
        config = json.loads((run / "config.json").read_text())
        if "k" not in spec.evaluate_options(run_options(config), data):
            continue
        view, _ = held_out_view(config, 2)
        assert samples_latents(build_model(config), view.x, view.transform), (model, data)
