"""Checks that tie :class:`~pyro_gen.lightning.LightningSVI` to what the user hands it.

Two ways a user's ordinary Pyro program trains nothing, silently, under Lightning:

- the param store loses the tensors the optimizer steps (``pyro.clear_param_store()``
  inside the model, as in a copied notebook loop, or in a callback): the next trace makes
  fresh leaves, the loss uses those, and the optimizer keeps stepping the old ones;
- Pyro's own idiom ``Trace_ELBO(...)(model, guide)`` (an ``ELBOModule``, as in Pyro's
  ``examples/svi_lightning.py``) passed as the model, whose loss settings were dropped for
  the default ``Trace_ELBO()``, or passed as ``loss=``, which then failed inside the model.
"""

from __future__ import annotations

from typing import Any

import pyro
from pyro.infer.elbo import ELBOModule
from torch import nn

__all__ = ["lost_params", "store_lost_error", "unpack_elbo_module"]


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


def unpack_elbo_module(model: Any, guide: Any, loss: Any) -> tuple[Any, Any, Any]:
    """``LightningSVI(Trace_ELBO(...)(model, guide))`` as ``(model, guide, loss)``.

    An ``ELBOModule`` binds a model and guide to its ELBO, so its ELBO (particles,
    ``vectorize_particles``, ...) is the loss; a second guide or loss beside it, or one
    passed as ``loss=``, is refused. Anything else is returned as given.

    Example:
        >>> from pyro.infer import Trace_ELBO
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro.nn import PyroModule
        >>> net = PyroModule[nn.Linear](2, 1)
        >>> elbo = Trace_ELBO(num_particles=3)
        >>> _, _, loss = unpack_elbo_module(elbo(net, AutoNormal(net)), None, None)
        >>> loss is elbo
        True
    """
    if isinstance(loss, ELBOModule):
        raise TypeError(
            "loss is an ELBOModule (Trace_ELBO()(model, guide)), a model and guide bound "
            "to a loss, not a loss: pass it as the model, LightningSVI(elbo_module), or "
            "pass the ELBO itself, loss=Trace_ELBO()"
        )
    if not isinstance(model, ELBOModule):
        return model, guide, loss
    if guide is not None or (loss is not None and loss is not model.elbo):
        raise TypeError(
            "the model is an ELBOModule (Trace_ELBO()(model, guide)), which brings its own "
            "guide and loss: pass no guide= or loss= beside it, or pass "
            "LightningSVI(model, guide, loss=...) instead"
        )
    return model.model, model.guide, model.elbo
