"""The plate over a batch's examples that every ready-made model and guide opens, shared by
the model families (VAE, flows, diffusion), so that each takes the caller's plate alike."""

from __future__ import annotations

import contextlib

import pyro
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.runtime import get_plates

__all__ = ["data_plate", "enclosing_plate"]


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
