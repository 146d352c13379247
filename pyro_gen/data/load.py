"""One entry point for every dataset: ``load(name, split, root, **kwargs)``."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch

from pyro_gen.data.digits import load_digits
from pyro_gen.data.fashion_mnist import load_fashion_mnist
from pyro_gen.data.idx_dataset import check_split
from pyro_gen.data.mnist import load_mnist
from pyro_gen.data.toys import TOYS, load_toy

#: name -> loader(split, root, **kwargs) returning (data, labels or None).
DATASETS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor | None]]] = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "digits": load_digits,
    **{name: functools.partial(load_toy, name) for name in TOYS},
}


def load(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Load a dataset split as CPU tensors.

    Images come back as uint8 ``(N, H, W)`` with int64 labels ``(N,)``: ``mnist`` and
    ``fashion_mnist`` are 28x28 in 0..255, ``digits`` is 8x8 in 0..16 (17 levels: pass
    ``num_bins=17`` to :func:`~pyro_gen.data.dynamic_binarize` and the other preprocessing
    functions, or divide by 16 for intensities in [0, 1]). The 2D toys
    (``eight_gaussians``, ``moons``, ``checkerboard``, ``rings``, ``spirals``,
    ``pinwheel``) come back as float32 ``(N, 2)`` and ``None``, and take
    ``num_samples=`` and ``seed=``.

    Args:
        name: dataset name (see :data:`DATASETS`).
        split: ``"train"`` or ``"test"``.
        root: folder for cached files (default ``$PYRO_GEN_DATA``, else
            ``~/.cache/pyro_gen``); ignored by datasets that need no files.
        **kwargs: passed to the dataset's loader, e.g. ``download=False`` and
            ``mirrors=[...]`` for MNIST, ``num_samples=`` and ``seed=`` for toys.

    Raises:
        ValueError: unknown name or split (the message lists the valid ones).
        DatasetError: the data could not be found, fetched, verified or read.

    Example:
        >>> x, y = load("digits", "test")
        >>> x.shape, x.dtype, y.shape
        (torch.Size([297, 8, 8]), torch.uint8, torch.Size([297]))
        >>> x, y = load("spirals", num_samples=100, seed=3)
        >>> x.shape, y
        (torch.Size([100, 2]), None)
    """
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    check_split(split)
    return DATASETS[key](split, root, **kwargs)
