"""A quiet Lightning ``Trainer`` for the tests that train through ``LightningSVI``: on the
CPU, with no logger, checkpoints, progress bar or model summary unless a test asks for one,
and a fixture body that quiets Lightning's logging and warnings around a fresh param store.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import lightning
import pyro


def quiet_trainer(**kwargs: Any) -> lightning.Trainer:
    """A ``Trainer`` with the quiet defaults, ``kwargs`` (``max_epochs=``, ``max_steps=``,
    a logger the test reads) taking precedence."""
    settings: dict[str, Any] = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return lightning.Trainer(**{**settings, **kwargs})


def quiet_lightning() -> Iterator[None]:
    """The body of an autouse fixture: Lightning's info logging and warnings off, and the
    param store empty before and after the test."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    pyro.clear_param_store()
