"""Image datasets stored as four IDX files (train/test images and labels), e.g. MNIST.

A dataset is described by an :class:`IdxDatasetSpec`. Loading reads the cache folder
``<root>/<spec.folder>`` (uncompressed IDX files, or the ``.gz`` originals); when the
split is missing there, the dataset's sources are tried in order, each of which puts
verified IDX files into that folder, and the first that succeeds wins. If every source
fails, one :class:`~pyro_gen.data.errors.DatasetError` lists what each attempt said.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from pyro_gen.data.download import (
    DEFAULT_TIMEOUT,
    OFFLINE_ENV,
    download_from_mirrors,
    downloads_allowed,
)
from pyro_gen.data.errors import DatasetError
from pyro_gen.data.idx import idx_md5, read_idx, write_idx
from pyro_gen.data.paths import DATA_ENV, dataset_dir

SPLITS = ("train", "test")

#: A source puts the IDX files of one split (or all of them) into the given folder.
Source = Callable[[Path, str], None]


@dataclasses.dataclass(frozen=True)
class IdxDatasetSpec:
    """What an IDX image dataset looks like and where it may be downloaded from.

    Attributes:
        title: human-readable name for messages.
        folder: cache sub-folder under the data root.
        files: split -> (images file, labels file), uncompressed names.
        md5: ``<file>.gz`` -> its published md5.
        mirrors: base URLs that serve the ``.gz`` files.
        sizes: split -> number of examples.
        image_shape: shape of one image.
        num_classes: labels lie in ``range(num_classes)``.
        raw_md5: uncompressed file name -> md5 of its published contents, checked
            whenever a file is imported into the cache.

    Example:
        >>> spec = IdxDatasetSpec("Tiny", "tiny", {"train": ("ti", "tl"), "test": ("si", "sl")},
        ...                       {}, (), {"train": 2, "test": 1}, (2, 2), 3)
        >>> spec.files["train"]
        ('ti', 'tl')
    """

    title: str
    folder: str
    files: dict[str, tuple[str, str]]
    md5: dict[str, str]
    mirrors: tuple[str, ...]
    sizes: dict[str, int]
    image_shape: tuple[int, ...]
    num_classes: int
    raw_md5: dict[str, str] = dataclasses.field(default_factory=dict)


def check_split(split: str) -> None:
    """Raise a ``ValueError`` naming the valid splits unless ``split`` is one.

    Example:
        >>> check_split("valid")
        Traceback (most recent call last):
        ...
        ValueError: split must be one of 'train', 'test'; got 'valid'
    """
    if split not in SPLITS:
        valid = ", ".join(repr(s) for s in SPLITS)
        raise ValueError(f"split must be one of {valid}; got {split!r}")


def _existing(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def validate(spec: IdxDatasetSpec, split: str, path: Path, array: np.ndarray, labels: bool) -> None:
    """Check that an array read from ``path`` has the shape and values the spec promises.

    Example:
        >>> spec = IdxDatasetSpec("Tiny", "tiny", {"train": ("ti", "tl"), "test": ("si", "sl")},
        ...                       {}, (), {"train": 2, "test": 1}, (2, 2), 3)
        >>> validate(spec, "test", Path("sl"), np.array([5], dtype=np.uint8), labels=True)
        Traceback (most recent call last):
        ...
        pyro_gen.data.errors.DatasetError: sl holds labels outside 0..2; it is corrupt...
    """
    n = spec.sizes[split]
    expected = (n,) if labels else (n, *spec.image_shape)
    remedy = "Delete it and call load again to fetch a fresh copy."
    if array.dtype != np.uint8 or array.shape != expected:
        raise DatasetError(
            f"{path} holds a {array.dtype} array of shape {array.shape}, but {spec.title} "
            f"{split} {'labels' if labels else 'images'} are uint8 of shape {expected}. {remedy}"
        )
    if labels and array.size and int(array.max()) >= spec.num_classes:
        raise DatasetError(
            f"{path} holds labels outside 0..{spec.num_classes - 1}; it is corrupt. {remedy}"
        )


def read_split(
    spec: IdxDatasetSpec, directory: Path, split: str
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The split's (uint8 images, int64 labels) from ``directory``, or None if absent.

    Raises:
        DatasetError: a file is present but corrupt, truncated or of the wrong shape.
    """
    paths = [_existing(directory, name) for name in spec.files[split]]
    if any(p is None for p in paths):
        return None
    images, labels = (read_idx(p) for p in paths)
    validate(spec, split, paths[0], images, labels=False)
    validate(spec, split, paths[1], labels, labels=True)
    for path, array in zip(paths, (images, labels)):
        if path.suffix == ".gz":  # keep an uncompressed copy: later loads skip gunzip
            with contextlib.suppress(DatasetError, OSError):
                write_idx(path.with_suffix(""), array)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def store(
    spec: IdxDatasetSpec, split: str, name: str, array: np.ndarray, origin: str, dest_dir: Path
) -> None:
    """Check ``array`` (read from ``origin``) and cache it as the IDX file ``dest_dir / name``.

    Raises:
        DatasetError: wrong shape or values, or contents differing from the published md5.
    """
    validate(spec, split, Path(origin), array, labels=name == spec.files[split][1])
    expected = spec.raw_md5.get(name)
    if expected is not None and idx_md5(array) != expected:
        raise DatasetError(
            f"{origin}: its contents (as {name}) have md5 {idx_md5(array)}, but the published "
            f"{name} has md5 {expected}; it was not cached. Replace {origin} with a good copy."
        )
    write_idx(dest_dir / name, array)


def import_file(spec: IdxDatasetSpec, split: str, name: str, src: Path, dest_dir: Path) -> None:
    """Read the IDX file ``src`` (plain or ``.gz``), check it and cache it uncompressed."""
    store(spec, split, name, read_idx(src), str(src), dest_dir)


def download_source(
    spec: IdxDatasetSpec,
    mirrors: Sequence[str] | None = None,
    *,
    download: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Source:
    """A source that downloads the split's ``.gz`` files, checks their md5 and unpacks them.

    Each verified ``.gz`` is decompressed into the cache as plain IDX (fast to read) and
    then deleted. ``mirrors`` defaults to ``spec.mirrors``.
    """
    mirrors = tuple(spec.mirrors if mirrors is None else mirrors)

    def fetch(directory: Path, split: str) -> None:
        if not downloads_allowed(download):
            raise DatasetError(f"skipped (downloads are off: download=False or {OFFLINE_ENV}=1)")
        dead: set[str] = set()
        for name in spec.files[split]:
            if (directory / name).is_file():
                continue
            gz = download_from_mirrors(
                f"{name}.gz", spec.md5[f"{name}.gz"], mirrors, directory, timeout=timeout, dead=dead
            )
            try:
                import_file(spec, split, name, gz, directory)
            finally:
                gz.unlink(missing_ok=True)

    return fetch


def directory_source(spec: IdxDatasetSpec, source_dir: str | os.PathLike[str], hint: str) -> Source:
    """A source that copies all splits from a local folder of IDX files (plain or ``.gz``).

    ``hint`` tells the user how to get that folder (e.g. the package to install).
    """
    source_dir = Path(source_dir)

    def fetch(directory: Path, split: str) -> None:
        found = []
        for s in SPLITS:
            for name in spec.files[s]:
                path = _existing(source_dir, name)
                if path is None:
                    raise DatasetError(f"{source_dir / (name + '.gz')} not found ({hint})")
                found.append((s, name, path))
        for s, name, path in found:
            import_file(spec, s, name, path, directory)

    return fetch


def load_idx_dataset(
    spec: IdxDatasetSpec,
    split: str,
    root: str | os.PathLike[str] | None,
    sources: Sequence[tuple[str, Source]],
    remedy: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split from the cache, filling the cache from ``sources`` when needed.

    Args:
        spec: the dataset.
        split: ``"train"`` or ``"test"``.
        root: data root (see :func:`pyro_gen.data.paths.data_root`).
        sources: ``(description, source)`` pairs, tried in order.
        remedy: what the user can do when every source fails.

    Returns:
        uint8 images ``(N, *spec.image_shape)`` and int64 labels ``(N,)``.
    """
    check_split(split)
    directory = dataset_dir(root, spec.folder)
    found = read_split(spec, directory, split)
    if found is not None:
        return found
    failures = []
    for description, source in sources:
        try:
            source(directory, split)
            found = read_split(spec, directory, split)
        except DatasetError as e:
            failures.append(f"- {description}: {e}")
            continue
        if found is not None:
            return found
        failures.append(f"- {description}: did not provide the {split} files")
    tried = "\n".join(failures)
    raise DatasetError(
        f"{spec.title} ({split}) is not in {directory} and no source could provide it:\n"
        f"{tried}\nTo fix: {remedy} You can also put the four IDX files "
        f"({', '.join(n for s in SPLITS for n in spec.files[s])}, optionally .gz) in "
        f"{directory} (set root= or {DATA_ENV} to use another folder)."
    )
