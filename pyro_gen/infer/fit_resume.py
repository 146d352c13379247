"""``fit``'s start: fresh, or restored exactly from the run directory's checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro.optim
import torch

from pyro_gen.infer.checkpoint import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    CheckpointError,
    encode_checkpoint,
    parse_checkpoint,
    read_checkpoint_bytes,
    records_match,
    restore_checkpoint,
    write_metrics,
)
from pyro_gen.infer.checkpoint_metrics import check_fit_metrics
from pyro_gen.infer.distributed import DataParallel
from pyro_gen.infer.files import refuse_read_only, refuse_symlink
from pyro_gen.infer.fit_layout import Layout, check_layout
from pyro_gen.infer.fit_progress import _finished, _Progress
from pyro_gen.infer.program import Program


def _on_main(dp: DataParallel | None, fn: Callable[[], Any]) -> Any:
    return fn() if dp is None else dp.on_main(fn)


def _resume(
    dp: DataParallel | None,
    ckpt_dir: Path | None,
    device: torch.device,
    prog: Program,
    optim: pyro.optim.PyroOptim,
    params: list[str],
    local: dict[str, torch.Tensor],
    layout: Layout,
    epochs: int | None,
    steps: int | None,
) -> _Progress:
    """The progress to start from: fresh, or restored (objects, RNG streams) from the run
    directory's checkpoint, which rank 0 reads and every rank restores. A checkpoint that
    cannot continue this run exactly is refused before anything is restored."""
    world_size = dp.world_size if dp is not None else 1
    if ckpt_dir is None:
        return _Progress(world_size=world_size, layout=layout)
    path = ckpt_dir / CHECKPOINT_NAME

    def read() -> bytes | None:
        # A link planted where the checkpoint or the metrics go was read through (a resume
        # from a file outside the run directory) and refused only when first written, after
        # the training up to the first checkpoint; so was a directory in the metrics' place.
        for name in (CHECKPOINT_NAME, METRICS_NAME):
            refuse_symlink(ckpt_dir / name)
        if not path.exists():
            return None
        return read_checkpoint_bytes(path)  # a huge file of another kind is refused unread

    # Rank 0 reads the bytes and every rank parses them (onto its own device): a parsed
    # checkpoint sent between processes would hold copies of the constraint singletons.
    raw = _on_main(dp, read)
    ckpt = parse_checkpoint(raw, path, map_location=device) if raw is not None else None
    state = _Progress(world_size=world_size, layout=layout)
    if ckpt is not None:
        saved = _Progress(**ckpt["progress"])
        if saved.world_size != world_size:
            raise CheckpointError(
                f"checkpoint {path} was written by {saved.world_size} process(es) and this run "
                f"has {world_size}: the shuffle order and each process's random numbers depend "
                f"on the number of processes, so it resumes exactly only under "
                f"{saved.world_size} (torchrun --nproc_per_node {saved.world_size}, or one "
                "process for 1); or train into a fresh checkpoint_dir"
            )
        if not _finished(saved, epochs, steps):  # restoring only (steps=0): any batching
            check_layout(path, saved.epoch, saved.batch, saved.layout, layout)
        state = _Progress(
            **restore_checkpoint(
                ckpt, modules=prog.modules, optim=optim, params=params, local_params=local
            )
        )
        # at an epoch boundary the data may be batched anew (as Lightning allows)
        state.layout = layout
        if dp is not None and state.rank_streams is not None:
            dp.restore_streams(state.rank_streams)

    def check_writable() -> None:
        # A run file made read-only (to keep it) is refused now, not after the training up
        # to the first checkpoint; restoring only (steps=0) writes neither, so may read one.
        for name in (CHECKPOINT_NAME, METRICS_NAME):
            refuse_read_only(ckpt_dir / name)
        # A checkpoint refused when first written (a param with the user's own constraint
        # class, which it cannot record by name) failed after the first epoch's training.
        try:
            encode_checkpoint(
                path,
                modules=prog.modules,
                optim=optim,
                progress=state.state(),
                params=params,
                local_params=local,
            )
        except CheckpointError as e:
            raise CheckpointError(
                f"{e}; or train without checkpoint_dir. Nothing was trained"
            ) from e

    if not _finished(state, epochs, steps):
        _on_main(dp, check_writable)

    def reset_metrics() -> None:
        # After every refusal above, so that a refused run leaves the records as they were.
        metrics = ckpt_dir / METRICS_NAME
        if ckpt is None and metrics.exists():
            check_fit_metrics(metrics)  # emptied only if fit wrote it: not a user's file
        # The records match the checkpoint: none for a fresh start, whatever was there (left
        # alone where they already do: restoring only, steps=0, writes nothing).
        written = state.history or metrics.exists()
        if written and not records_match(metrics, state.history):
            write_metrics(metrics, state.history)

    _on_main(dp, reset_metrics)
    return state
