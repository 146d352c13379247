"""Loading state dicts written under a module's former parameter names."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from torch import nn


def rename_legacy_keys(state_dict: dict[str, Any], prefix: str, old: str, new: str) -> None:
    """Renames, in place, the entries of ``state_dict`` under ``prefix + old`` to
    ``prefix + new``; where the new name is there too, the old entry is dropped.

    A network that once registered its output layer twice (as ``output`` and as the last
    entry of ``net``) wrote each of its tensors under two names, and checkpoints holding the
    second must still load now that it has one.

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


class LegacyKeys(nn.Module):
    """Mixin: ``load_state_dict`` takes the names :meth:`_legacy_keys` maps to today's.

    A subclass returns ``{former submodule prefix: current prefix}``; the renaming happens
    as the module loads (so nested in any model, and under ``strict=True``), and
    :func:`upgrade_state_dict` applies it ahead of loading, for code that compares keys
    before it loads.
    """

    def _legacy_keys(self) -> dict[str, str]:
        return {}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for old, new in self._legacy_keys().items():
            rename_legacy_keys(state_dict, prefix, old, new)
        super()._load_from_state_dict(state_dict, prefix, *args)


def upgrade_state_dict(module: nn.Module, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``state_dict`` (for ``module``) with every former name that a
    :class:`LegacyKeys` submodule maps renamed, as ``module.load_state_dict`` renames it:
    what a check of the keys before loading should compare.

    Example:
        >>> from pyro_gen.nn import MADE
        >>> made = MADE(2, [4], 2)
        >>> old = {**made.state_dict(), "net.2.weight": made.output.weight}  # as once saved
        >>> sorted(upgrade_state_dict(made, old)) == sorted(made.state_dict())
        True
    """
    out = OrderedDict(state_dict)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    for name, sub in module.named_modules():
        if isinstance(sub, LegacyKeys):
            for old, new in sub._legacy_keys().items():
                rename_legacy_keys(out, f"{name}." if name else "", old, new)
    return out
