"""A pyro_gen module or a user's own Pyro model, with its guide: what the VAE helpers that
run a model and guide (:func:`~pyro_gen.vae.missing.impute`, the posterior diagnostics)
take."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["model_and_guide"]


def model_and_guide(vae: Any, guide: Callable | None) -> tuple[Callable, Callable]:
    """``(model, guide)``: a module's ``model`` and (unless ``guide`` is given) its
    ``guide``, or a model callable with the ``guide`` given.

    Example:
        >>> def model(x): ...
        >>> def guide(x): ...
        >>> model_and_guide(model, guide) == (model, guide)
        True
    """
    module = vae if hasattr(vae, "model") and hasattr(vae, "guide") else None
    model = module.model if module is not None else vae
    guide = guide if guide is not None else (module.guide if module is not None else None)
    if not callable(model) or guide is None or not callable(guide):
        raise TypeError(
            "expected a pyro_gen VAE, or a Pyro model callable with guide=...: got "
            f"{type(vae).__name__}" + ("" if guide is None else f" and {type(guide).__name__}")
        )
    return model, guide
