"""A check that ties :class:`~pyro_gen.lightning.LightningSVI` to what the user hands it.

A user's ordinary Pyro program trains nothing, silently, under Lightning when the param store
loses the tensors the optimizer steps (``pyro.clear_param_store()`` inside the model, as in a
copied notebook loop, or in a callback): the next trace makes fresh leaves, the loss uses
those, and the optimizer keeps stepping the old ones. (Pyro's ``Trace_ELBO(...)(model,
guide)`` idiom is taken apart by :mod:`pyro_gen.infer.elbo_module`.)
"""

from __future__ import annotations

import pyro
from torch import nn

__all__ = ["lost_params", "store_lost_error"]


def lost_params(adopted: dict[str, nn.Parameter]) -> list[str]:
    """The names of ``adopted`` param-store entries the store no longer holds as they are.

    Reads the store's own dict (no copy), so that it is cheap enough for every step.

    Example:
        >>> import torch
        >>> pyro.clear_param_store()
        >>> p = pyro.param("w", torch.nn.Parameter(torch.zeros(2)))
        >>> lost_params({"w": p})
        []
        >>> pyro.clear_param_store()
        >>> lost_params({"w": p})
        ['w']
    """
    held = pyro.get_param_store()._params  # name -> unconstrained leaf, as Pyro keeps it
    return [name for name, p in adopted.items() if held.get(name) is not p]


def store_lost_error(lost: list[str], during_fit: bool) -> RuntimeError:
    """The one error for a param store that lost trained tensors (see the module note).

    Example:
        >>> print(store_lost_error(["loc"], during_fit=True))  # doctest: +ELLIPSIS
        the Pyro param store no longer holds 'loc' (of 1), ... during training ...
    """
    where = (
        "during training (pyro.clear_param_store() inside the model or guide, or in a "
        "callback?): the model then makes fresh parameters that no optimizer steps. Clear "
        "the store once, before building the LightningSVI, never inside the model"
        if during_fit
        else "after it was built or trained: was pyro.clear_param_store() called? The model "
        "would make a fresh one that no optimizer steps. Build a new LightningSVI to start "
        "from the initial values, or leave the store as it is between Trainer.fit calls to "
        "continue training"
    )
    return RuntimeError(
        f"the Pyro param store no longer holds {lost[0]!r} (of {len(lost)}), which this "
        f"LightningSVI trains, {where}"
    )
