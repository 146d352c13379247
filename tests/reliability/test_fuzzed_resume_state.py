"""``pyro-gen train`` resuming a damaged run: a mutated config.json, and checksummed RNG
and optimizer states it cannot set or step (moments of another shape than their parameter)
refused in one line before anything is restored.

Seeded fuzzing (issue 11: every failure is one clear error; nothing read from disk executes
code; a corrupt file is refused by name): what a reader must do with each mutation, and how
an escape is reported, is in fuzzing.py's docstring."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from pyro_gen.infer.checkpoint import CheckpointError, load_checkpoint, write_payload
from tests.reliability.fuzzing import SEED, _deadline, _payload, _replaced, _value_mutations
from tests.reliability.run_fixtures import assert_one_line_error, cli, trained_run


def _train_resume(capsys: pytest.CaptureFixture, run: Path) -> tuple[int, str]:
    """``pyro-gen train`` resuming ``run`` for a second epoch: exit status and stderr."""
    with _deadline(60):
        status, _, err = cli(
            capsys, "train", "vae", "--data", "digits", "--epochs", "2", "--no-progress",
            "--out", run,
        )  # fmt: skip
    return status, err


def test_train_resume_from_a_mutated_config(tmp_path: Path, capsys) -> None:
    """``pyro-gen train`` resuming reads config.json's options and training settings: before
    they were checked there, 2**31 layers built for minutes, and a missing seed, a list as
    --subset or 10**30 as a size escaped as KeyError or TypeError (a traceback). config.json
    has no checksum, so a mutation the run still trains with may train."""
    config = json.loads((trained_run(tmp_path, "probe") / "config.json").read_text())
    named = [
        ("layers 2**31", {**config, "options": {**config["options"], "layers": 2**31}}),
        ("seed deleted", {k: v for k, v in config.items() if k != "seed"}),
        ("subset a list", {**config, "subset": []}),
        ("lr NaN", {**config, "lr": math.nan}),
        ("z_dim 10**30", {**config, "options": {**config["options"], "z_dim": 10**30}}),
    ]
    picked = random.Random(SEED).sample(_value_mutations(config, 200, SEED), 10)
    for i, (label, value) in enumerate([*named, *picked]):
        run = trained_run(tmp_path, f"run{i}")
        (run / "config.json").write_text(json.dumps(value))
        status, err = _train_resume(capsys, run)
        if i < len(named):
            assert status != 0, f"{label}: trained"
            assert_one_line_error(status, err, str(run / "config.json"))
        elif status != 0:
            assert_one_line_error(status, err)


RNG_DAMAGE = [
    ("rng/random state 'NaN'", ("rng", "random", 1), "NaN"),
    ("rng/random version 99", ("rng", "random", 0), 99),
    ("rng/numpy name", ("rng", "numpy", 0), "x"),
    ("rng/torch a number", ("rng", "torch"), 0),
    ("rng/torch too short", ("rng", "torch"), torch.zeros(3, dtype=torch.uint8)),
]


@pytest.mark.parametrize(("label", "where", "value"), RNG_DAMAGE, ids=[c[0] for c in RNG_DAMAGE])
def test_train_resume_refuses_a_checksummed_rng_state_it_cannot_set(
    tmp_path: Path, capsys, label: str, where: tuple, value: Any
) -> None:
    """``pyro-gen train`` resuming from a payload whose RNG state no generator takes: it
    escaped as TypeError from random.setstate midway through restoring (a traceback, and
    the modules already overwritten) before the states were tried on throwaway generators
    when the checkpoint is read."""
    run = trained_run(tmp_path)
    path = run / "checkpoint.pt"
    payload = _payload(path)
    write_payload(path, _replaced(payload, where, value, delete=False))
    status, err = _train_resume(capsys, run)
    assert_one_line_error(status, err, str(path), "unknown layout")


OPTIMIZER_DAMAGE = [
    ("exp_avg a float", ("state", 0, "exp_avg"), 0.5, "'exp_avg'"),
    ("exp_avg of another shape", ("state", 0, "exp_avg_sq"), torch.zeros(3), "'exp_avg_sq'"),
    ("step a string", ("state", 0, "step"), "x", "step count"),
    ("state a list", ("state",), [], "not a state dict"),
]


@pytest.mark.parametrize(
    ("label", "where", "value", "named"), OPTIMIZER_DAMAGE, ids=[c[0] for c in OPTIMIZER_DAMAGE]
)
def test_train_resume_refuses_checksummed_optimizer_state_it_cannot_step(
    tmp_path: Path, capsys, label: str, where: tuple, value: Any, named: str
) -> None:
    """``pyro-gen train`` resuming from a payload whose Adam state holds a float where a
    tensor of the parameter's shape belongs: it read cleanly and failed at the first
    training step with a TypeError traceback; now refused when the file is read, naming
    the parameter and what was wrong."""
    run = trained_run(tmp_path)
    path = run / "checkpoint.pt"
    payload = _payload(path)
    first = next(iter(payload["optim"]))
    write_payload(path, _replaced(payload, ("optim", first, *where), value, delete=False))
    with pytest.raises(CheckpointError, match=rf"unknown layout.*{named}.*{first}|{named}"):
        load_checkpoint(path)
    status, err = _train_resume(capsys, run)
    assert_one_line_error(status, err, str(path), "unknown layout")


def test_train_resume_refuses_moments_of_another_shape_than_their_parameter(
    tmp_path: Path, capsys
) -> None:
    """Both Adam moments of a module's parameter replaced by tensors of one wrong shape:
    reading compares them only with each other (the file saves the parameter with its
    module, under another name), so this passed the read and failed at the first training
    step with torch's error. The resume compares them with the live parameter before it
    restores anything."""
    run = trained_run(tmp_path)
    path = run / "checkpoint.pt"
    payload = _payload(path)
    name = next(n for n in payload["optim"] if n not in payload["param_store"]["params"])
    for key in ("exp_avg", "exp_avg_sq"):
        payload = _replaced(payload, ("optim", name, "state", 0, key), torch.zeros(7), False)
    write_payload(path, payload)
    load_checkpoint(path)  # consistent with each other: the read takes them
    status, err = _train_resume(capsys, run)
    assert_one_line_error(status, err, name, "has shape (7,)", "fresh directory")
