"""The plate over a batch's examples that every ready-made model and guide opens, shared by
the model families (VAE, flows, diffusion, GAN), so that each takes the caller's plate alike,
and how many examples a conditional model generates for its labels or context."""

from __future__ import annotations

import contextlib

import pyro
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.runtime import get_plates
from torch import Tensor

__all__ = ["check_sample_count", "data_plate", "enclosing_plate", "generated_rows"]


def enclosing_plate(dim: int = -1) -> CondIndepStackFrame | None:
    """The frame of the caller's vectorized plate at ``dim`` that applies to the sites at
    this point of the program, if any (its ``size`` is a subsampled plate's subsample).

    Read from Pyro's own record of the enclosing plates (``get_plates``) rather than the
    handler stack, so that a plate hidden by a ``poutine.block`` between it and here, which
    would not apply to the sites, is not taken for theirs.

    Example:
        >>> with pyro.plate("batch", 10, subsample_size=3):
        ...     enclosing_plate()
        CondIndepStackFrame(name='batch', dim=-1, size=3, counter=0, full_size=10)
        >>> enclosing_plate() is None
        True
    """
    for frame in get_plates():
        if frame.vectorized and frame.dim == dim:
            return frame
    return None


def data_plate(size: int, owner: str, name: str = "data") -> contextlib.AbstractContextManager:
    """The training programs' plate over the ``size`` examples of a batch,
    ``pyro.plate(name, size, dim=-1)``, or none when the caller's program already has a
    plate at dim -1 over them: that plate, subsampled or not, is then theirs.

    Why: Pyro's own minibatch idiom, ``with pyro.plate("data", N, subsample_size=B) as idx:
    m.model(x[idx])``, met "Multiple sample sites named 'data'" (a plate of the same name) or
    "at plates 'data' and 'batch', collide at dim=-1" (another name), though the user's plate
    says what the model's would, and scales the terms by ``N / B`` as asked.

    Raises:
        ValueError: when the enclosing plate at dim -1 has another size than the batch.

    Example:
        >>> with pyro.plate("data", 10, subsample_size=4):  # the user's plate is the data plate
        ...     isinstance(data_plate(4, "ScoreModel"), contextlib.nullcontext)
        True
        >>> data_plate(4, "ScoreModel").name, data_plate(4, "ScoreModel").dim
        ('data', -1)
        >>> with pyro.plate("batch", 10):
        ...     data_plate(4, "VAE")
        Traceback (most recent call last):
        ...
        ValueError: VAE puts the 4 examples of its data at dim -1, where the caller's plate ...
    """
    frame = enclosing_plate(-1)
    if frame is None:
        return pyro.plate(name, size, dim=-1)
    if frame.size != size:
        raise ValueError(
            f"{owner} puts the {size} examples of its data at dim -1, where the "
            f"caller's plate {frame.name!r} holds {frame.size}: call the model "
            "under a plate over the examples it is given (subsampled: "
            "x[idx] under pyro.plate(name, N, subsample_size=B) as idx), or under "
            "none"
        )
    return contextlib.nullcontext()


def check_sample_count(owner: str, num_samples: int | None, rows: int, what: str) -> None:
    """Refuses a ``num_samples`` other than the ``rows`` of ``y`` a conditional model
    generates one example each for (``None`` and 1 mean one per row): another count was
    ignored, silently. ``what`` names a row ("label", "context row").

    Example:
        >>> check_sample_count("VAE", None, 3, "label")
        >>> check_sample_count("VAE", 7, 3, "label")
        Traceback (most recent call last):
        ...
        ValueError: VAE.model(None, y=..., num_samples=7) generates one example per label of \
y, which holds 3: leave num_samples out (or pass 3), or pass 7 of them
    """
    if num_samples not in (None, 1, rows):
        raise ValueError(
            f"{owner}.model(None, y=..., num_samples={num_samples}) generates one example "
            f"per {what} of y, which holds {rows}: leave num_samples out (or pass {rows}), "
            f"or pass {num_samples} of them"
        )


def generated_rows(owner: str, context: Tensor, y: Tensor, num_samples: int | None) -> int:
    """The number of examples a conditional model generates for ``y``, whose context (the
    one-hot labels, or ``y`` itself) is ``context``: one per row, its second-to-last dim.
    Dims left of it are batch dims, one per ``Predictive(parallel=True)`` sample when ``y``
    comes from a latent (``y.shape[0]`` made the plate the number of samples).

    Example:
        >>> import torch
        >>> generated_rows("VAE", torch.zeros(4, 5, 3), torch.zeros(4, 5), None)
        5
    """
    if context.dim() < 2:
        raise ValueError(
            f"{owner}.model(None, y=...) generates one example per label (or context row) "
            f"of y, got y of shape {tuple(y.shape)}: pass labels of shape (N,) or a context "
            "of shape (N, C) (one example: y.unsqueeze(0))"
        )
    rows = context.shape[-2]
    check_sample_count(owner, num_samples, rows, "label (context row)")
    return rows
