"""How ``fit`` cut the data into an epoch's batches, as a checkpoint records it.

A checkpoint written inside an epoch holds its place there as a count of batches of that
epoch's shuffled order. The count means another place (or none: past the epoch's end) when
the data are batched otherwise, so a mid-epoch resume needs the same layout; at an epoch
boundary nothing is half done, and the batch size may change (as Lightning allows).

Example:
    >>> import torch
    >>> from pyro_gen.data.batching import batch_calls
    >>> layout = data_layout(batch_calls(torch.zeros(96, 2), 16, shuffle=True), 16)
    >>> layout
    {'batch_size': 16, 'examples': 96, 'batches': 6}
    >>> check_layout(Path("run/checkpoint.pt"), 0, 4, layout, {**layout, "batch_size": 32})
    Traceback (most recent call last):
    ...
    pyro_gen.infer.checkpoint_format.CheckpointError: checkpoint run/checkpoint.pt was written 4 ...
"""

from __future__ import annotations

from pathlib import Path

from pyro_gen.data.batching import BatchCalls, TensorBatches
from pyro_gen.infer.checkpoint import CheckpointError
from pyro_gen.infer.distributed import ShardedBatches

Layout = dict[str, int | None]


def data_layout(batches: BatchCalls | ShardedBatches, batch_size: int) -> Layout:
    """The batch size (tensor data, which ``fit`` batches), the number of examples and the
    number of batches an epoch (each None where unknown)."""
    inner = batches.inner if isinstance(batches, ShardedBatches) else batches
    try:
        number: int | None = len(batches)
    except TypeError:  # a function returning the user's batches
        number = None
    return {
        "batch_size": batch_size if isinstance(inner, TensorBatches) else None,
        "examples": inner.num_examples,
        "batches": number,
    }


def _describe(layout: Layout, keys: list[str]) -> str:
    units = {
        "batch_size": "batch_size={}",
        "examples": "{} examples",
        "batches": "{} batches an epoch",
    }
    return ", ".join(units[k].format(layout[k]) for k in keys)


def check_layout(path: Path, epoch: int, batch: int, saved: Layout | None, layout: Layout) -> None:
    """Refuses a checkpoint written ``batch`` batches into epoch ``epoch`` (counted from 0)
    whose data were batched otherwise than this run's ``layout``.

    Raises:
        CheckpointError: naming what differs, both values, and the epoch to finish first.
    """
    if batch == 0 or saved is None:
        return
    differ = [
        k
        for k, v in saved.items()
        if v is not None and layout.get(k) is not None and layout[k] != v
    ]
    if not differ:
        return
    raise CheckpointError(
        f"checkpoint {path} was written {batch} batches into epoch {epoch + 1} with "
        f"{_describe(saved, differ)}, but this run has {_describe(layout, differ)}: the rest "
        "of that epoch's shuffled order cannot be continued from there exactly. Resume with "
        f"the data batched as before until the epoch ends (epochs={epoch + 1}), then change "
        "it (a resume at an epoch boundary takes another batch size), or train into a fresh "
        "checkpoint_dir"
    )
