"""Every model family on CUDA through the ``pyro-gen`` command, which trains with ``fit``:
a few steps with the compiled step, a checkpoint, a resume, evaluation and samples."""

from __future__ import annotations

import json
import math

import pytest
import torch

import pyro_gen
from pyro_gen.cli import main
from pyro_gen.cli_models import MODELS, run_options
from pyro_gen.infer.checkpoint import load_checkpoint
from tests.cuda.tier import DEVICE, MARKS, capture, compiled_step_ran, messages

pytestmark = MARKS

TOY = ["--toy-samples", "512", "--batch-size", "128"]
IMAGES = ["--subset", "256", "--test-subset", "64", "--batch-size", "64"]

# (model, dataset, options, whether fit's compiled step records the model's ELBO: the
# adversarial loss is not an ELBO and trains through the plain step by design)
FAMILIES = [
    ("vae", "digits", [*IMAGES, "--z-dim", "4", "--hidden-dim", "32"], True),
    ("realnvp", "moons", TOY, True),
    ("maf", "moons", TOY, True),
    ("nsf", "moons", TOY, True),
    ("glow", "digits", IMAGES, True),
    ("ddpm", "moons", [*TOY, "--timesteps", "50"], True),
    ("ddpm", "digits", [*IMAGES, "--timesteps", "20"], True),
    ("sde", "moons", [*TOY, "--hidden-dim", "32"], True),
    ("cnf", "moons", [*TOY, "--objective", "flow-matching"], True),
    ("gan", "ring", [*TOY, "--z-dim", "4", "--hidden-dim", "32"], False),
]


# evaluate's options, small; each run is given those its model's evaluation reads (the others
# are refused)
EVALUATE_ARGS = {
    "k": ["--k", "4"],
    "num_test": ["--num-test", "64"],
    "num_samples": ["-n", "64"],
    "classifier_epochs": ["--classifier-epochs", "1"],
    "probability_flow": [],  # the ODE likelihood: not part of this smoke run
}


def _evaluate_args(run) -> list[str]:
    config = json.loads((run / "config.json").read_text())
    honoured = MODELS[config["model"]].evaluate_options(run_options(config), config["data"])
    return [word for name in honoured for word in EVALUATE_ARGS[name]]


def _finite_numbers(results: dict) -> list[float]:
    return [v for v in results.values() if isinstance(v, float)]


@pytest.mark.parametrize(
    ("model", "data", "options", "compiled"),
    FAMILIES,
    ids=[f"{m}-{d}" for m, d, *_ in FAMILIES],
)
def test_train_resume_evaluate_sample(model, data, options, compiled, tmp_path, caplog):
    run = tmp_path / "run"
    train = ["train", model, "--data", data, "--out", str(run), "--device", str(DEVICE),
             "--no-progress", *options]  # fmt: skip
    capture(caplog)
    assert main([*train, "--epochs", "1"]) == 0
    if compiled:
        compiled_step_ran(caplog)
    else:
        assert not [m for m in messages(caplog) if "compiled SVI step off" in m]
    first = load_checkpoint(run / "checkpoint.pt", map_location=DEVICE)
    steps = first["progress"]["step"]
    assert steps >= 2

    # resume: the second epoch continues from the checkpoint
    assert main([*train, "--epochs", "2"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["step"] == 2 * steps
    assert all(math.isfinite(r["train_loss"]) for r in records)

    # the trained model comes back on the device and samples there
    trained = pyro_gen.load(run, device=DEVICE)
    tensors = [*trained.parameters(), *trained.buffers()]
    assert tensors and all(t.device.type == DEVICE.type for t in tensors)
    x = trained.sample(4)
    assert x.device.type == DEVICE.type and bool(torch.isfinite(x).all())

    evaluate = ["evaluate", str(run), "--device", str(DEVICE), *_evaluate_args(run)]
    assert main(evaluate) == 0
    results = json.loads((run / "evaluation.json").read_text())
    numbers = _finite_numbers(results)
    assert numbers and all(math.isfinite(v) for v in numbers), results

    png = tmp_path / "samples.png"
    assert main(["sample", str(run), "--device", str(DEVICE), "-n", "8", "--out", str(png)]) == 0
    assert png.stat().st_size > 0
