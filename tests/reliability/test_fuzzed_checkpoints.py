"""Fuzzed checkpoint files of a one-epoch VAE run on digits: flipped bytes in each region,
header values of every JSON type, and checksummed payloads of another layout (crafted tagged
entries, tensors where plain values belong, planted pickled code).

Seeded fuzzing (issue 11: every failure is one clear error; nothing read from disk executes
code; a corrupt file is refused by name): what a reader must do with each mutation, and how
an escape is reported, is in fuzzing.py's docstring."""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import pyro_gen
from pyro_gen.infer.checkpoint import MAGIC, CheckpointError, load_checkpoint, write_payload
from pyro_gen.runs import RunError
from tests.reliability.fuzzing import (
    ODD_VALUES,
    SEED,
    Escapes,
    _checkpoint_regions,
    _mutations,
    _Payload,
    _payload,
    _value_mutations,
    _with_header,
)
from tests.reliability.run_fixtures import trained_run


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
