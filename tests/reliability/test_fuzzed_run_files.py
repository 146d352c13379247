"""Fuzzed run files besides the checkpoint (config.json, metrics.jsonl), an empty file or a
directory in a run file's place, and ``pyro-gen sample``/``evaluate`` given a damaged run:
one line of error, no traceback.

Seeded fuzzing (issue 11: every failure is one clear error; nothing read from disk executes
code; a corrupt file is refused by name): what a reader must do with each mutation, and how
an escape is reported, is in fuzzing.py's docstring."""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from pathlib import Path

import pytest
import torch

import pyro_gen
from pyro_gen.infer.checkpoint import MAGIC, CheckpointError
from pyro_gen.runs import RunError, recorded_epochs
from tests.reliability.fuzzing import (
    SEED,
    Escapes,
    _checkpoint_regions,
    _deadline,
    _mutations,
    _value_mutations,
    _with_header,
)
from tests.reliability.run_fixtures import assert_one_line_error, cli, trained_run


def test_config_json(tmp_path: Path) -> None:
    """config.json has no checksum: a mutated one may load when its model still fits the
    checkpoint; otherwise RunError names it, or CheckpointError says the checkpoint does not
    fit. Before 9c8eced an option of 2**31 layers built for hours, and "x" or
    10**30 as a size escaped as TypeError."""
    run = trained_run(tmp_path)
    path = run / "config.json"
    text = path.read_text()
    config = json.loads(text)
    escapes = Escapes()
    cases = [(label, json.dumps(value)) for label, value in _value_mutations(config, 200, SEED)]
    regions = {"text": (0, len(text))}
    cases += [(label, raw) for label, raw in _mutations(text.encode(), regions, 60, SEED)]

    def loaded() -> None:
        try:
            pyro_gen.load(run)
        except RunError as e:  # config.json's error names it (its run directory at least)
            assert str(run) in str(e), f"RunError does not name {run}: {e}"
            raise

    for label, mutated in cases:
        (path.write_text if isinstance(mutated, str) else path.write_bytes)(mutated)
        escapes.run(label, loaded, (RunError, CheckpointError), None, lambda: True)
    escapes.check(at_least_refused=100)


def test_metrics_jsonl(tmp_path: Path) -> None:
    """metrics.jsonl is read only to count the epochs a run records (``train`` and the
    message for a lost checkpoint): any damage counts as no records, never an error."""
    run = trained_run(tmp_path)
    path = run / "metrics.jsonl"
    raw = path.read_bytes()
    records = [json.loads(line) for line in raw.decode().splitlines()]
    cases = _mutations(raw, {"records": (0, len(raw))}, 100, SEED)
    cases += [
        (label, "".join(json.dumps(r) + "\n" for r in value).encode())
        for label, value in _value_mutations(records, 100, SEED)
    ]
    cases += [("not utf-8", b"\xff\xfe{}\n"), ("a number per line", b"1\n2\n")]
    escapes = Escapes()
    for label, mutated in cases:
        path.write_bytes(mutated)
        escapes.run(label, lambda: recorded_epochs(run), (), None, lambda: True)
    assert not escapes.found, escapes.found[:10]


@pytest.mark.parametrize("name", ["checkpoint.pt", "config.json", "metrics.jsonl"])
@pytest.mark.parametrize("kind", ["empty", "directory"])
def test_empty_file_or_directory_in_its_place(tmp_path: Path, name: str, kind: str) -> None:
    run = trained_run(tmp_path)
    path = run / name
    path.unlink()
    if kind == "empty":
        path.write_bytes(b"")
    else:
        (path / "inside").mkdir(parents=True)
    if name == "metrics.jsonl":
        assert recorded_epochs(run) == 0
        return
    error = CheckpointError if name == "checkpoint.pt" else RunError
    with pytest.raises(error) as info:
        pyro_gen.load(run)
    assert str(run) in str(info.value) and "\n" not in str(info.value)


def _cli_cases(run: Path, tmp_path: Path) -> list[tuple[str, str, bytes]]:
    """A few mutations of each run file, for the command line."""
    ckpt = (run / "checkpoint.pt").read_bytes()
    regions, header_end = _checkpoint_regions(ckpt)
    header = json.loads(ckpt[len(MAGIC) : header_end])
    data = ckpt[header_end + 1 :]
    config = json.loads((run / "config.json").read_text())
    picks = random.Random(SEED)
    cases = [
        ("checkpoint.pt", label, raw)
        for label, raw in picks.sample(_mutations(ckpt, regions, 100, SEED), 4)
    ]
    cases.append(
        ("checkpoint.pt", "size Infinity", _with_header(data, {**header, "size": math.inf}))
    )
    crafted = {**torch.load(io.BytesIO(data), weights_only=True), "modules": []}
    buffer = io.BytesIO()
    torch.save(crafted, buffer)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    cases.append(
        (
            "checkpoint.pt",
            "modules a list, checksummed",
            _with_header(
                buffer.getvalue(), {"format": 2, "size": len(buffer.getvalue()), "sha256": digest}
            ),
        )
    )
    for label, value in [
        ("layers 2**31", {**config, "options": {**config["options"], "layers": 2**31}}),
        ("hidden_dim 'x'", {**config, "options": {**config["options"], "hidden_dim": "x"}}),
        ("z_dim NaN", {**config, "options": {**config["options"], "z_dim": math.nan}}),
        ("event_shape [10**30]", {**config, "event_shape": [10**30, 8]}),
    ]:
        cases.append(("config.json", label, json.dumps(value).encode()))
    return cases


def test_cli_sample_and_evaluate_give_one_line(tmp_path: Path, capsys) -> None:
    run = trained_run(tmp_path)
    good = {name: (run / name).read_bytes() for name in ("checkpoint.pt", "config.json")}
    for i, (name, label, mutated) in enumerate(_cli_cases(run, tmp_path)):
        (run / name).write_bytes(mutated)
        command = (
            ["sample", run, "-n", "2"]
            if i % 3
            else ["evaluate", run, "--k", "2", "--num-test", "8"]
        )
        with _deadline(60):
            status, _, err = cli(capsys, *command)
        assert status != 0, (name, label)
        assert_one_line_error(status, err, name)
        (run / name).write_bytes(good[name])
