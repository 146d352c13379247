"""Image datasets stored as four IDX files (train/test images and labels), e.g. MNIST.

A dataset is described by an :class:`IdxDatasetSpec`. Loading reads the cache folder
``<root>/<spec.folder>`` (uncompressed IDX files, or the ``.gz`` originals); when the
split is missing there, the dataset's sources are tried in order, each of which puts
verified IDX files into that folder, and the first that succeeds wins. If every source
fails, one :class:`~pyro_gen.data.errors.DatasetError` lists what each attempt said.

Every read of the cache is verified, not only the import into it: each file's size, shape
and label range, then the sha256 of its contents against the published file's
(:attr:`IdxDatasetSpec.raw_sha256`). A damaged file is refused with a
:class:`~pyro_gen.data.errors.CorruptCacheError` naming it and the command that rebuilds
the cache (:func:`rebuild_command`). The check costs one sha256 pass over data already
in memory: a warm-cache load of MNIST train takes about 70 ms instead of 26 ms on an idle
AMD EPYC core (2.3x in a same-run comparison; benchmarks/RESULTS.md, "Dataset caches
verified on read"), once per run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from pyro_gen.data.download import (
    DEFAULT_DEADLINE,
    DEFAULT_TIMEOUT,
    OFFLINE_ENV,
    Timeout,
    download_from_mirrors,
    downloads_allowed,
    gzip_cap,
)
from pyro_gen.data.errors import CorruptCacheError, DatasetError
from pyro_gen.data.idx import idx_sha256, read_idx, write_idx
from pyro_gen.data.paths import (
    DATA_ENV,
    check_directory,
    check_file_or_absent,
    dataset_dir,
    remove_stale_parts,
)

SPLITS = ("train", "test")

#: A source puts the IDX files of one split (or all of them) into the given folder.
Source = Callable[[Path, str], None]


@dataclasses.dataclass(frozen=True)
class IdxDatasetSpec:
    """What an IDX image dataset looks like and where it may be downloaded from.

    Attributes:
        title: human-readable name for messages.
        folder: cache sub-folder under the data root, also the name
            :func:`pyro_gen.data.load` knows the dataset by.
        files: split -> (images file, labels file), uncompressed names.
        md5: ``<file>.gz`` -> its published md5.
        mirrors: base URLs that serve the ``.gz`` files.
        sizes: split -> number of examples.
        image_shape: shape of one image.
        num_classes: labels lie in ``range(num_classes)``.
        raw_sha256: uncompressed file name -> sha256 of the published file, checked when
            a file enters the cache and every time it is read from it.

    Example:
        >>> spec = IdxDatasetSpec("Tiny", "tiny", {"train": ("ti", "tl"), "test": ("si", "sl")},
        ...                       {}, (), {"train": 2, "test": 1}, (2, 2), 3,
        ...                       {n: "0" * 64 for n in ("ti", "tl", "si", "sl")})
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
    raw_sha256: dict[str, str]

    def __post_init__(self) -> None:
        missing = [n for s in SPLITS for n in self.files[s] if n not in self.raw_sha256]
        if missing:  # every cached file must be verifiable on read
            raise ValueError(f"{self.title}: raw_sha256 lacks {', '.join(missing)}")

    def cache_names(self) -> list[str]:
        """Every file name the cache folder may hold (plain IDX and ``.gz``)."""
        return [n + ext for s in SPLITS for n in self.files[s] for ext in ("", ".gz")]

    def raw_size(self, split: str, labels: bool) -> int:
        """Bytes of the uncompressed IDX file of a split's images or labels."""
        shape = (self.sizes[split],) if labels else (self.sizes[split], *self.image_shape)
        return 4 + 4 * len(shape) + int(np.prod(shape))


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


def _existing(spec: IdxDatasetSpec, directory: Path, name: str) -> Path | None:
    what = f"the {spec.title} cache file {name}"
    for candidate in (directory / name, directory / f"{name}.gz"):
        if check_file_or_absent(candidate, what):
            return candidate
    return None


def rebuild_command(spec: IdxDatasetSpec, directory: Path) -> str:
    """The shell command that rebuilds the cache folder ``directory`` of ``spec``.

    Example:
        >>> from pyro_gen.data.mnist import MNIST
        >>> rebuild_command(MNIST, Path("/data/my cache/mnist"))
        "python -m pyro_gen.data rebuild mnist --root '/data/my cache'"
    """
    return (
        f"python -m pyro_gen.data rebuild {spec.folder} --root {shlex.quote(str(directory.parent))}"
    )


def validate(
    spec: IdxDatasetSpec,
    split: str,
    path: Path,
    array: np.ndarray,
    labels: bool,
    rebuild: str | None = None,
) -> None:
    """Check that an array read from ``path`` has the shape and values the spec promises.

    With ``rebuild`` (``path`` is a cache file) a failure is a
    :class:`~pyro_gen.data.errors.CorruptCacheError` that gives that command.

    Example:
        >>> spec = IdxDatasetSpec("Tiny", "tiny", {"train": ("ti", "tl"), "test": ("si", "sl")},
        ...                       {}, (), {"train": 2, "test": 1}, (2, 2), 3,
        ...                       {n: "0" * 64 for n in ("ti", "tl", "si", "sl")})
        >>> validate(spec, "test", Path("sl"), np.array([5], dtype=np.uint8), labels=True)
        Traceback (most recent call last):
        ...
        pyro_gen.data.errors.DatasetError: sl holds labels outside 0..2; it is corrupt...
    """
    n = spec.sizes[split]
    expected = (n,) if labels else (n, *spec.image_shape)
    problem = None
    if array.dtype != np.uint8 or array.shape != expected:
        problem = (
            f"holds a {array.dtype} array of shape {array.shape}, but {spec.title} {split} "
            f"{'labels' if labels else 'images'} are uint8 of shape {expected}"
        )
    elif labels and array.size and int(array.max()) >= spec.num_classes:
        problem = f"holds labels outside 0..{spec.num_classes - 1}; it is corrupt"
    if problem is None:
        return
    if rebuild is None:
        raise DatasetError(
            f"{path} {problem}. Delete it and call load again to fetch a fresh copy."
        )
    raise CorruptCacheError(f"{path} {problem}. Rebuild it with: {rebuild}", path, rebuild)


def _read_cached(
    spec: IdxDatasetSpec, split: str, name: str, path: Path, rebuild: str
) -> np.ndarray:
    labels = name == spec.files[split][1]
    array = read_idx(path, max_bytes=spec.raw_size(split, labels), rebuild=rebuild)
    validate(spec, split, path, array, labels, rebuild)
    actual, expected = idx_sha256(array), spec.raw_sha256[name]
    if actual != expected:
        raise CorruptCacheError(
            f"{path} is corrupt: its contents have sha256 {actual[:16]}..., the published "
            f"{spec.title} {name} has {expected[:16]}...; nothing was loaded. Rebuild it "
            f"with: {rebuild}",
            path,
            rebuild,
        )
    return array


def read_split(
    spec: IdxDatasetSpec, directory: Path, split: str
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The split's (uint8 images, int64 labels) from ``directory``, or None if absent.

    Every file found is verified (size, shape, labels and sha256), even when the other
    one is missing, so a damaged file is reported rather than silently replaced.

    Raises:
        CorruptCacheError: a file is present but damaged; names it and the rebuild command.
        DatasetError: something other than a file is where a cache file belongs.
    """
    rebuild = rebuild_command(spec, directory)
    arrays = []
    for name in spec.files[split]:
        path = _existing(spec, directory, name)
        if path is not None:
            arrays.append(_read_cached(spec, split, name, path, rebuild))
            if path.suffix == ".gz":  # keep an uncompressed copy: later loads skip gunzip
                with contextlib.suppress(DatasetError):
                    write_idx(path.with_suffix(""), arrays[-1])
    if len(arrays) < 2:
        return None
    images, labels = arrays
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def store(
    spec: IdxDatasetSpec, split: str, name: str, array: np.ndarray, origin: str, dest_dir: Path
) -> None:
    """Check ``array`` (read from ``origin``) and cache it as the IDX file ``dest_dir / name``.

    Raises:
        DatasetError: wrong shape or values, or contents differing from the published file.
    """
    validate(spec, split, Path(origin), array, labels=name == spec.files[split][1])
    actual, expected = idx_sha256(array), spec.raw_sha256[name]
    if actual != expected:
        raise DatasetError(
            f"{origin}: its contents (as {name}) have sha256 {actual}, but the published "
            f"{name} has sha256 {expected}; it was not cached. Replace {origin} with a good "
            f"copy."
        )
    write_idx(dest_dir / name, array)


def import_file(spec: IdxDatasetSpec, split: str, name: str, src: Path, dest_dir: Path) -> None:
    """Read the IDX file ``src`` (plain or ``.gz``), check it and cache it uncompressed."""
    max_bytes = spec.raw_size(split, labels=name == spec.files[split][1])
    store(spec, split, name, read_idx(src, max_bytes=max_bytes), str(src), dest_dir)


def download_source(
    spec: IdxDatasetSpec,
    mirrors: Sequence[str] | None = None,
    *,
    download: bool | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
) -> Source:
    """A source that downloads the split's ``.gz`` files, checks their md5 and unpacks them.

    Each verified ``.gz`` is decompressed into the cache as plain IDX (fast to read) and
    then deleted. ``mirrors`` defaults to ``spec.mirrors``. ``timeout`` and ``deadline``
    bound each file (see :func:`~pyro_gen.data.download.download_file`); a body larger
    than any gzip of the expected file (:func:`~pyro_gen.data.download.gzip_cap`) is cut
    off.
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
                f"{name}.gz",
                spec.md5[f"{name}.gz"],
                mirrors,
                directory,
                timeout=timeout,
                deadline=deadline,
                max_bytes=gzip_cap(spec.raw_size(split, labels=name == spec.files[split][1])),
                dead=dead,
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
                path = _existing(spec, source_dir, name)
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
    check_directory(directory)
    remove_stale_parts(directory, spec.cache_names())  # left by a killed or failed writer
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
