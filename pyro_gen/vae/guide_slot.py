"""The guide slot of pyro_gen's VAEs: ``vae.guide`` is the guide in use, and assigning any
Pyro guide to it replaces the built-in one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from torch import nn

from pyro_gen.transforms._base import PicklableModule
from pyro_gen.vae.posteriors import Posterior


class GuideSlot(PicklableModule):
    """Base of modules whose ``guide`` is their built-in :meth:`default_guide` until a Pyro
    guide is assigned.

    ``module.guide = g`` stores any Pyro guide callable ``g`` (a function with
    ``pyro.sample`` statements for the model's latent sites, a Pyro autoguide, an
    ``AutoGuideList``, :class:`~pyro_gen.vae.autoguide.AutoAmortizedNormal`); reading
    ``module.guide`` returns it, so ``SVI(module.model, module.guide, ...)`` and
    :func:`pyro_gen.infer.fit` use it. A guide that is an ``nn.Module`` is registered as
    the submodule ``custom_guide``, so its weights are in ``state_dict()`` and move with
    ``.to(device)``. ``module.guide = None`` restores the built-in guide. Without this
    slot the assignment would be silently shadowed by the ``guide`` method.

    Example:
        >>> import pyro
        >>> from pyro_gen.vae import VAE
        >>> vae = VAE((4, 4), z_dim=2, hidden_dim=8)
        >>> def my_guide(x, y=None):
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", pyro.distributions.Normal(0.0, 1.0).expand([2]).to_event(1))
        >>> vae.guide = my_guide
        >>> vae.guide is my_guide
        True
        >>> vae.guide = None
        >>> vae.guide == vae.default_guide
        True
    """

    custom_guide: Callable[..., Any] | None

    def __init__(self) -> None:
        super().__init__()
        nn.Module.__setattr__(self, "custom_guide", None)

    def default_guide(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    @property
    def guide(self) -> Callable[..., Any]:
        """The guide in use: the assigned Pyro guide, else :meth:`default_guide`."""
        custom = self.custom_guide
        return self.default_guide if custom is None else custom

    @guide.setter
    def guide(self, guide: Callable[..., Any] | None) -> None:
        self.set_guide(guide)

    def __setattr__(self, name: str, value: Any) -> None:
        # nn.Module.__setattr__ files modules under _modules, bypassing the property setter,
        # which is how a plain `vae.guide = module` used to vanish behind the method.
        if name == "guide":
            self.set_guide(value)
        else:
            super().__setattr__(name, value)

    def _check_guide(self, guide: Callable[..., Any]) -> None:
        """Hook: refuse a replacing guide this model cannot work with."""

    def set_guide(self, guide: Callable[..., Any] | None) -> None:
        """Replace the guide by any Pyro guide callable (``None`` restores the built-in one).

        Raises:
            TypeError: ``guide`` is a posterior family (a module returning a distribution,
                not a Pyro guide) or not callable.
        """
        if guide is not None:
            if isinstance(guide, Posterior):
                raise TypeError(
                    f"{type(guide).__name__} is a posterior family (it returns a distribution "
                    f"and has no pyro.sample statement), not a Pyro guide: pass it as "
                    f"{type(self).__name__}(..., posterior=...)"
                )
            if not callable(guide):
                raise TypeError(
                    f"a guide must be a callable with pyro.sample statements for the model's "
                    f"latent sites, got {type(guide).__name__}"
                )
            self._check_guide(guide)
        if "custom_guide" in self._modules:
            del self._modules["custom_guide"]
        nn.Module.__setattr__(self, "custom_guide", guide)

    def _guide_latent(self, site: str, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The assigned guide's value for ``site``: its median where it has one (Pyro
        autoguides, AutoAmortizedNormal), else one draw."""
        guide = self.custom_guide
        if hasattr(guide, "median"):
            return guide.median(*args, **kwargs)[site]
        return poutine.trace(guide).get_trace(*args, **kwargs).nodes[site]["value"]
