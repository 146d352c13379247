"""``python -m pyro_gen.data rebuild NAME [--root DIR]``: rebuild a dataset's cache.

The command that every :class:`~pyro_gen.data.errors.CorruptCacheError` names. It
removes the dataset's cached files (plain IDX, ``.gz`` and abandoned ``.part`` files;
never anything else) and loads both splits again from the dataset's sources, which
verify every file before it enters the cache. ``PYRO_GEN_OFFLINE`` and
``PYRO_GEN_DATA`` apply as for :func:`pyro_gen.data.load`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pyro_gen.data.errors import DatasetError
from pyro_gen.data.fashion_mnist import FASHION_MNIST
from pyro_gen.data.idx_dataset import SPLITS, IdxDatasetSpec
from pyro_gen.data.load import load
from pyro_gen.data.mnist import MNIST
from pyro_gen.data.paths import (
    DATA_ENV,
    check_directory,
    check_file_or_absent,
    dataset_dir,
    remove_stale_parts,
)

#: Datasets kept in a cache folder, by the name :func:`pyro_gen.data.load` knows.
CACHED: dict[str, IdxDatasetSpec] = {spec.folder: spec for spec in (MNIST, FASHION_MNIST)}


def rebuild(name: str, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Delete the cached files of dataset ``name`` under ``root`` and load them again.

    Returns:
        The files removed.

    Raises:
        ValueError: ``name`` is not a cached dataset.
        DatasetError: a directory sits where a cache file belongs, or no source could
            provide the data again.

    Example:
        >>> rebuild("digits")
        Traceback (most recent call last):
        ...
        ValueError: 'digits' has no cache to rebuild; cached datasets: mnist, fashion_mnist
    """
    spec = CACHED.get(name)
    if spec is None:
        raise ValueError(f"{name!r} has no cache to rebuild; cached datasets: {', '.join(CACHED)}")
    directory = dataset_dir(root, spec.folder)
    check_directory(directory)
    removed = remove_stale_parts(directory, spec.cache_names())
    for file_name in spec.cache_names():
        path = directory / file_name
        if os.path.islink(path) or check_file_or_absent(path, f"the {spec.title} cache file"):
            path.unlink()
            removed.append(path)
    for split in SPLITS:
        load(name, split, root)
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors are one line on stderr)."""
    # The --help texts are plain words: the module docstring's reST markup is for the docs.
    parser = argparse.ArgumentParser(
        prog="python -m pyro_gen.data",
        description="Maintain the datasets' caches. `rebuild NAME` is the command that an "
        "error about a damaged cache names.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser(
        "rebuild",
        help="delete a dataset's cache and fetch it again",
        description="Removes the dataset's cached files (plain IDX, .gz and abandoned .part "
        "files; never anything else) and loads both splits again from the dataset's sources, "
        "which verify every file before it enters the cache. PYRO_GEN_OFFLINE and "
        "PYRO_GEN_DATA apply as for pyro_gen.data.load.",
    )
    command.add_argument("name", choices=sorted(CACHED), help="the dataset whose cache to rebuild")
    command.add_argument(
        "--root",
        default=None,
        help=f"data root (default: ${DATA_ENV}, else ~/.cache/pyro_gen)",
    )
    args = parser.parse_args(argv)
    try:
        removed = rebuild(args.name, args.root)
    except (DatasetError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    where = dataset_dir(args.root, CACHED[args.name].folder)
    print(f"rebuilt {where} (removed {len(removed)} old file(s)); both splits verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
