"""Resuming :class:`~pyro_gen.lightning.LightningSVI` under ``Trainer(max_steps=...)`` from a
checkpoint saved at the end of an epoch.

Lightning (2.x) marks the loops of a run bounded by ``max_steps`` as restarting inside an epoch
whenever they load a checkpoint (``FitLoop.restarting``: ``... or
self._iteration_based_training()``), because a run that ``max_steps`` stopped halfway through an
epoch counts that epoch as finished, and that is how it continues it. A checkpoint saved when
the epoch had run all its batches (``max_steps`` a multiple of the epoch's batches,
``ModelCheckpoint`` at an epoch's end, ``trainer.save_checkpoint`` after ``fit``) then resumes
an epoch that has none left: without a validation loader the epoch loop trains one batch of the
next epoch's shuffle (numbered past the end, the epoch restarted) and leaves the rest of that
shuffle for a new one; with one, it trains no batch and draws a second shuffle. Either way the
resumed run is not the run that was never stopped. Lightning resumes the same checkpoint exactly
under ``max_epochs``, where it is not restarting, so for a checkpoint whose epoch ran to its end
the fit loop is made to decide as it does there. A checkpoint saved inside an epoch keeps
Lightning's own restart (which, for a ``DataLoader`` that keeps no state, restarts the epoch's
shuffle; Lightning warns about it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ended_at_epoch_end", "forget_epoch_end_resume", "resume_at_epoch_end"]

# FitLoop's method that decides restarting; an instance attribute of that name shadows it
_DECIDES = "_iteration_based_training"


def ended_at_epoch_end(checkpoint: dict[str, Any]) -> bool:
    """Whether ``checkpoint`` (Lightning's dict) was saved after its epoch's last training batch:
    the epoch loop had reached the last batch and the fit loop had processed the epoch.

    Example:
        >>> done = {"ready": 1, "started": 1, "processed": 1, "completed": 1}
        >>> loops = {"epoch_progress": {"current": done},
        ...          "epoch_loop.batch_progress": {"is_last_batch": True}}
        >>> ended_at_epoch_end({"loops": {"fit_loop": loops}})
        True
        >>> loops["epoch_loop.batch_progress"]["is_last_batch"] = False  # stopped inside it
        >>> ended_at_epoch_end({"loops": {"fit_loop": loops}})
        False
    """
    loops = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epoch = (loops.get("epoch_progress") or {}).get("current") or {}
    last_batch = (loops.get("epoch_loop.batch_progress") or {}).get("is_last_batch", False)
    processed = epoch.get("processed")
    return bool(last_batch) and processed is not None and processed == epoch.get("started")


def resume_at_epoch_end(fit_loop: Any, checkpoint: dict[str, Any]) -> None:
    """Makes ``fit_loop`` (a ``Trainer.fit_loop`` about to load ``checkpoint``'s loops) decide
    whether it restarts as under ``max_epochs`` when the checkpoint's epoch ran to its end;
    :func:`forget_epoch_end_resume` undoes it when that ``Trainer.fit`` ends.

    Example:
        >>> class FitLoop:  # stands for Lightning's
        ...     max_steps = 8
        ...     def _iteration_based_training(self):
        ...         return self.max_steps != -1
        >>> loop = FitLoop()
        >>> done = {"ready": 1, "started": 1, "processed": 1, "completed": 1}
        >>> loops = {"epoch_progress": {"current": done},
        ...          "epoch_loop.batch_progress": {"is_last_batch": True}}
        >>> resume_at_epoch_end(loop, {"loops": {"fit_loop": loops}})
        >>> loop._iteration_based_training()
        False
        >>> forget_epoch_end_resume(loop)
        >>> loop._iteration_based_training()
        True
    """
    forget_epoch_end_resume(fit_loop)  # what an earlier Trainer.fit that failed left
    if fit_loop.max_steps == -1 or not hasattr(type(fit_loop), _DECIDES):
        return
    if ended_at_epoch_end(checkpoint):
        setattr(fit_loop, _DECIDES, lambda: False)


def forget_epoch_end_resume(fit_loop: Any) -> None:
    """Gives ``fit_loop`` back Lightning's own decision (a later resume decides afresh)."""
    vars(fit_loop).pop(_DECIDES, None)
