"""What a checkpoint file is: its names in a run directory, its header, its error."""

from __future__ import annotations

import json
from typing import Any

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
FORMAT_VERSION = 2
MAGIC = b"PYRO_GEN CHECKPOINT\n"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, of an old format, or belongs to another model."""


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` for text read from disk, whose every failure is a ``ValueError``.

    A line of many nested brackets (``[[[[...``) made ``json.loads`` raise
    ``RecursionError``, which the readers' ``except ValueError`` let through: a crafted
    ``metrics.jsonl``, ``config.json`` or checkpoint header ended a command in a traceback.

    Example:
        >>> parse_json('{"epoch": 1}')
        {'epoch': 1}
        >>> parse_json("[" * 100_000)
        Traceback (most recent call last):
        ...
        ValueError: JSON nested too deeply to be a pyro-gen file (a crafted or damaged file)
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(
            "JSON nested too deeply to be a pyro-gen file (a crafted or damaged file)"
        ) from None
