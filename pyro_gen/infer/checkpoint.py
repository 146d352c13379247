"""Checkpoints of a training run that load without running code and refuse damage.

A checkpoint holds every module's ``state_dict``, the Pyro param store (unconstrained values
by name, constraints by their public name), the optimizer state, the RNG states and the
run's progress. The file is::

    PYRO_GEN CHECKPOINT\\n
    {"format": 2, "size": N, "sha256": "..."}\\n
    N bytes written by torch.save

Reading checks the first line, the size (a truncated copy is refused) and the SHA-256 (a
flipped byte is refused) before anything is parsed, and then parses the payload with
``torch.load(weights_only=True)`` and no extra allowlist: the payload holds only tensors,
numbers, strings, lists, tuples and dicts (:mod:`pyro_gen.infer.state_codec` turns numpy
RNG states and constraints into those), so a crafted file cannot run code even with a
matching checksum, and a plain ``torch.save`` or pickle file is refused before it is
unpickled at all.

Why torch's restricted unpickler rather than safetensors + JSON: safetensors is not a
dependency of pyro_gen, holds flat tensors only (the optimizer's nested state, tuples and
integer keys would need a second JSON encoding of our own), and the two files of such a
checkpoint could not be replaced in one atomic step. It is faster: on an MNIST-VAE-sized
checkpoint (8.3 MB with Adam state) a load took 65 ms this way, 13 ms with safetensors +
JSON and 34 ms with the same SHA-256 added (busy 2-core Xeon, ``benchmarks/checkpoint_load.py``,
RESULTS.md "Checkpoint format"). A few tens of milliseconds once per resume, evaluate or
sample, next to seconds of start-up and of every epoch, do not buy a second dependency.

:func:`run_lock` gives a training run exclusive use of its directory.

Example:
    >>> import tempfile, pyro.optim
    >>> net = torch.nn.Linear(2, 1)
    >>> path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
    >>> save_checkpoint(path, modules={"model": net}, optim=pyro.optim.Adam({}),
    ...                 progress={"epoch": 1})
    >>> restore_checkpoint(load_checkpoint(path), modules={"model": net},
    ...                    optim=pyro.optim.Adam({}))
    {'epoch': 1}
"""

from __future__ import annotations

# torch and Path: the names the Example above uses.
from pathlib import Path  # noqa: F401

import torch  # noqa: F401

from pyro_gen.infer.checkpoint_format import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    MAGIC,
    METRICS_NAME,
    CheckpointError,
)
from pyro_gen.infer.checkpoint_read import (
    load_checkpoint,
    parse_checkpoint,
    read_checkpoint_bytes,
    verify_checkpoint,
)
from pyro_gen.infer.checkpoint_restore import restore_checkpoint, restore_modules
from pyro_gen.infer.checkpoint_write import (
    append_metrics,
    encode_checkpoint,
    optimizer_kind,
    records_match,
    save_checkpoint,
    write_metrics,
    write_payload,
)
from pyro_gen.infer.run_lock import LOCK_NAME, RunLockedError, run_lock

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT_VERSION",
    "LOCK_NAME",
    "MAGIC",
    "METRICS_NAME",
    "CheckpointError",
    "RunLockedError",
    "append_metrics",
    "encode_checkpoint",
    "load_checkpoint",
    "optimizer_kind",
    "parse_checkpoint",
    "read_checkpoint_bytes",
    "restore_checkpoint",
    "restore_modules",
    "run_lock",
    "save_checkpoint",
    "verify_checkpoint",
    "records_match",
    "write_metrics",
    "write_payload",
]
