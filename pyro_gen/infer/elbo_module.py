"""Pyro's ``Trace_ELBO(...)(model, guide)`` idiom: an ``ELBOModule`` binds a model and a guide
to an ELBO, so where pyro_gen takes ``(model, guide, loss)`` (``fit``, ``LightningSVI``) the
bound ELBO is the loss, with its settings (particles, ``vectorize_particles``, ...)."""

from __future__ import annotations

from typing import Any

from pyro.infer.elbo import ELBOModule

__all__ = ["unpack_elbo_module"]


def unpack_elbo_module(model: Any, guide: Any, loss: Any) -> tuple[Any, Any, Any]:
    """``(model, guide, loss)`` with an ``ELBOModule`` given as the model taken apart into its
    model, guide and ELBO; anything else is returned as given.

    A guide or another loss beside an ``ELBOModule``, or an ``ELBOModule`` passed as the
    loss, is refused: either would silently replace what the module binds.

    Example:
        >>> import torch
        >>> from pyro.infer import Trace_ELBO
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro.nn import PyroModule
        >>> net = PyroModule[torch.nn.Linear](2, 1)
        >>> elbo = Trace_ELBO(num_particles=3)
        >>> _, _, loss = unpack_elbo_module(elbo(net, AutoNormal(net)), None, None)
        >>> loss is elbo
        True
    """
    if isinstance(loss, ELBOModule):
        raise TypeError(
            "loss is an ELBOModule (Trace_ELBO()(model, guide)), a model and guide bound "
            "to a loss, not a loss: pass it as the model (with no guide= or loss=), or "
            "pass the ELBO itself, loss=Trace_ELBO()"
        )
    if not isinstance(model, ELBOModule):
        return model, guide, loss
    if guide is not None or (loss is not None and loss is not model.elbo):
        raise TypeError(
            "the model is an ELBOModule (Trace_ELBO()(model, guide)), which brings its own "
            "guide and loss: pass no guide= or loss= beside it, or pass the model and "
            "guide with loss=Trace_ELBO(...) instead"
        )
    return model.model, model.guide, model.elbo
