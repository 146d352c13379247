"""Telling a ``metrics.jsonl`` that ``fit`` wrote from a user's own file of that name.

A fresh ``fit`` into a directory that holds a ``metrics.jsonl`` but no checkpoint empties
it: the records there belong to a run whose checkpoint is gone (deleted to start over, or a
run stopped before its first checkpoint), and appending this run's epochs to them would
interleave two histories. That is right only for records ``fit`` wrote. A file of the
user's own under the name (notes, another tool's log) was emptied just the same, so it is
recognised by its records first: every line a JSON object with a whole ``epoch`` from 1
and a numeric ``train_loss``, as ``fit`` writes them; the last line may be cut short (a
process killed while appending it). Anything else is refused rather than kept: a run
appending its records to someone's file would damage it as surely, only more slowly.
"""

from __future__ import annotations

from pathlib import Path

from pyro_gen.infer.checkpoint_format import CHECKPOINT_NAME, CheckpointError, parse_json

# About 150 bytes an epoch: hundreds of thousands of epochs (pyro_gen.runs reads under it too).
METRICS_LIMIT = 64 * 2**20
# How every record fit writes begins (json.dumps of a dict whose first key is the epoch).
_START = '{"epoch": '


def is_fit_record(value: object) -> bool:
    """Whether ``value`` (a parsed line) is an epoch record as ``fit`` writes one.

    Example:
        >>> is_fit_record({"epoch": 1, "step": 4, "train_loss": 2.5})
        True
        >>> is_fit_record({"epoch": "1", "train_loss": 2.5}), is_fit_record([1, 2])
        (False, False)
    """
    if not isinstance(value, dict):
        return False
    epoch, loss = value.get("epoch"), value.get("train_loss")
    whole = isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1
    return whole and isinstance(loss, int | float) and not isinstance(loss, bool)


def check_fit_metrics(path: str | Path) -> None:
    """Refuses ``path`` unless it is a ``metrics.jsonl`` that ``fit`` wrote (or empty), so
    that a fresh run may empty it.

    Raises:
        CheckpointError: one line naming the file, why it is not a run's, and what to do.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "metrics.jsonl"
        >>> _ = p.write_text('{"epoch": 1, "train_loss": 0.5}\\n{"epoch": 2, "train_lo')
        >>> check_fit_metrics(p)
        >>> _ = p.write_text("loss went down today\\n")
        >>> check_fit_metrics(p)
        Traceback (most recent call last):
        ...
        pyro_gen.infer.checkpoint_format.CheckpointError: .../metrics.jsonl is not a ...
    """
    path = Path(path)
    why = _not_fit_metrics(path)
    if why is not None:
        raise CheckpointError(
            f"{path} is not a metrics file that fit wrote ({why}), and the directory has no "
            f"{CHECKPOINT_NAME}; a fresh run there would replace it. Move the file, or give "
            "another checkpoint_dir; nothing was trained or written"
        )


def _not_fit_metrics(path: Path) -> str | None:
    try:
        size = path.stat().st_size
        if size > METRICS_LIMIT:
            return f"{size} bytes, more than a run's records; not read"
        text = path.read_bytes().decode()
    except UnicodeDecodeError:
        return "not text"
    except OSError as e:
        return f"unreadable: {e.strerror}"
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except ValueError:
            torn = line.startswith(_START) or _START.startswith(line)
            if number == len(lines) and torn:
                continue  # the last record, cut short by a kill while it was appended
            return f"line {number} is not JSON"
        if not is_fit_record(record):
            return f"line {number} is not an epoch record with 'epoch' and 'train_loss'"
    return None
