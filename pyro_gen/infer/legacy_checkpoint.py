"""Converting checkpoints of pyro_gen before format 2 (plain ``torch.save`` pickles).

Reading such a file unpickles it, which can run any code the file holds, so conversion is
only for files the user wrote: :func:`convert_legacy_checkpoint` refuses unless told
``trust_pickle=True``. The original is kept beside the new file as ``checkpoint.pt.legacy``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from pyro_gen.infer.checkpoint import FORMAT_VERSION, MAGIC, CheckpointError, write_payload
from pyro_gen.infer.files import atomic_write_bytes, refuse_symlink
from pyro_gen.infer.state_codec import UnsafeStateError, encode, encode_constraint

# What save_checkpoint wrote before format 2.
_LEGACY_KEYS = {"model_class", "model_state", "param_store", "optim_state", "rng_state", "progress"}


def convert_legacy_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> Path:
    """Rewrites a pre-format-2 checkpoint at ``path`` in the current format.

    Args:
        path: the old ``checkpoint.pt``.
        trust_pickle: must be True: it says the file was written by you, since loading it
            unpickles it and a crafted file would run its code.

    Returns:
        Where the original was kept (``path`` + ``.legacy``).

    Raises:
        CheckpointError: without ``trust_pickle``, or if the file is already current or is
            not an old pyro_gen checkpoint.
    """
    path = Path(path)
    if not trust_pickle:
        raise CheckpointError(
            f"converting {path} unpickles it, which runs any code a crafted file holds; "
            "pass trust_pickle=True (--trust-pickle) only for a file you wrote yourself"
        )
    # A link planted there was followed: --trust-pickle, meant for the user's own file,
    # unpickled (ran) whatever file the link pointed at, and only its rewrite was refused.
    refuse_symlink(path)
    refuse_symlink(path.with_name(path.name + ".legacy"))
    if not path.is_file():  # missing, a directory, or a FIFO (whose open would block)
        raise CheckpointError(f"no checkpoint at {path}: nothing to convert")
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror}); nothing was converted") from e
    if head.startswith(MAGIC):
        raise CheckpointError(f"{path} is already a format {FORMAT_VERSION} checkpoint")
    # What torch.save writes starts with a zip header (or, before torch 1.6, a pickle
    # opcode): anything else (a file of zeros, a dataset) is refused before it is read whole.
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        raise CheckpointError(
            f"{path} is not a torch.save file (its first bytes are neither a zip nor a pickle "
            "header); nothing was converted. Retrain into a fresh directory"
        )
    raw = path.read_bytes()
    try:
        old = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)
    except Exception as e:  # a damaged or foreign file fails in many ways
        raise CheckpointError(f"{path} is not a readable torch.save file ({e})") from e
    missing = sorted(_LEGACY_KEYS - set(old)) if isinstance(old, dict) else sorted(_LEGACY_KEYS)
    if missing:
        raise CheckpointError(
            f"{path} is not a checkpoint of an older pyro_gen (it lacks {', '.join(missing)}); "
            "retrain into a fresh directory"
        )
    try:
        payload = _payload(old)
    except UnsafeStateError as e:
        raise CheckpointError(f"cannot convert {path}: {e}") from e
    legacy = path.with_name(path.name + ".legacy")
    atomic_write_bytes(legacy, raw)
    write_payload(path, payload)
    return legacy


def _payload(old: dict[str, Any]) -> dict[str, Any]:
    store = old["param_store"] or {}
    params, constraints = store.get("params", {}), store.get("constraints", {})
    return {
        "format": FORMAT_VERSION,
        "modules": {
            "model": {
                "class": old["model_class"],
                "state_dict": encode(old["model_state"], "model state"),
            }
        },
        "param_store": {
            "params": {n: v.detach() for n, v in params.items()},
            "constraints": {n: encode_constraint(constraints[n], n) for n in params},
        },
        "optim": encode(old["optim_state"], "optimizer state"),
        "rng": encode(old["rng_state"], "RNG state"),
        "progress": encode(old["progress"], "progress"),
    }
