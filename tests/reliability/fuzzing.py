"""Seeded mutations of the files pyro_gen reads from disk, and the log of the mutations a
reader failed on, for the test_fuzzed_*.py files (issue 11).

The mutations are drawn from a fixed seed: flipped bytes in each region of a file,
truncation, appended garbage, JSON values of another type, missing keys, huge numbers, NaN.
:class:`Escapes` runs a reader on each, under a deadline: it must refuse with its documented
error naming the file, or load where the content is verifiably the original's (a checksum
still matches, or the file has no checksum to check); any other exception, a hang, or a
marker file written by planted pickled code is an escape, and the test lists every one with
the index that reproduces it (``_mutations(..., seed)[index]``). Checkpoint helpers: its
regions, a header rewritten, and a pickled object whose unpickling writes a marker file (the
stand-in for arbitrary code)."""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from pyro_gen.infer.checkpoint import MAGIC

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


def _payload(path: Path) -> Any:
    """The payload of a checkpoint file (after its header line)."""
    raw = path.read_bytes()
    return torch.load(io.BytesIO(raw[raw.index(b"\n", len(MAGIC)) + 1 :]), weights_only=True)
