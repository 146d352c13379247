"""Loading state dicts written under a module's former parameter names."""

from __future__ import annotations

from typing import Any


def rename_legacy_keys(state_dict: dict[str, Any], prefix: str, old: str, new: str) -> None:
    """Renames, in place, the entries of ``state_dict`` under ``prefix + old`` to
    ``prefix + new``; where the new name is there too, the old entry is dropped.

    For a module's ``_load_from_state_dict``: a network that once registered its output
    layer twice (as ``output`` and as the last entry of ``net``) wrote each of its tensors
    under two names, and checkpoints holding the second must still load now that it has one.

    Args:
        state_dict: the dict being loaded (``load_state_dict`` passes a copy of the user's).
        prefix: the module's prefix in it, as ``_load_from_state_dict`` receives it.
        old: the former name of the submodule, with its trailing dot (``"net.4."``).
        new: its name now, with its trailing dot (``"output."``).

    Example:
        >>> sd = {"m.net.2.weight": 1, "m.output.weight": 1, "m.net.2.bias": 2}
        >>> rename_legacy_keys(sd, "m.", "net.2.", "output.")
        >>> sorted(sd.items())
        [('m.output.bias', 2), ('m.output.weight', 1)]
    """
    start = prefix + old
    for key in [k for k in state_dict if k.startswith(start)]:
        value = state_dict.pop(key)
        state_dict.setdefault(prefix + new + key[len(start) :], value)
