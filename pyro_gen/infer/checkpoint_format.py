"""What a checkpoint file is: its names in a run directory, its header, its error."""

from __future__ import annotations

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
FORMAT_VERSION = 2
MAGIC = b"PYRO_GEN CHECKPOINT\n"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, of an old format, or belongs to another model."""
