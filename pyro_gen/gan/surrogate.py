"""A Pyro surrogate loss (a callable such as ``EnergyDistance``) as a loss object with
``loss`` and ``loss_and_grads``, the two methods :func:`pyro_gen.infer.fit` calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class SurrogateLoss:
    """Wraps a callable ``loss_fn(model, guide, *args, **kwargs) -> Tensor`` whose gradient
    is the training signal (how :class:`pyro.infer.SVI` treats a loss that is not an ELBO),
    so that a training loop calling ``loss_and_grads`` can use it. :func:`pyro_gen.infer.fit`
    does not need it: ``fit(gen, data, loss=EnergyDistance(...))`` takes the callable as
    Pyro's ``SVI`` does; this is for one's own loops written against ``loss_and_grads``.

    Pyro's :class:`~pyro.infer.EnergyDistance` is the likelihood-free baseline for a
    :class:`~pyro_gen.gan.Generator`. It scores the whole batch of one call as one vector
    (it sums squared errors over the data plate before taking the distance), so a batch of
    ``B`` examples of dimension ``D`` is one draw in ``B * D`` dimensions: still a proper
    scoring rule for independent examples, but one data point per call, so small batches
    and several particles suit it (``benchmarks/gan_toys.py`` uses 16 and 8).

    Args:
        loss_fn: the surrogate loss, e.g. ``pyro.infer.EnergyDistance(num_particles=8)``.

    Example:
        >>> import pyro
        >>> from pyro_gen.gan import Generator
        >>> from pyro_gen.nn import MLPGenerator
        >>> gen = Generator(MLPGenerator(2, (2,), hidden_dims=(8,)))
        >>> loss = SurrogateLoss(pyro.infer.EnergyDistance(num_particles=4))
        >>> value = loss.loss_and_grads(gen.model, gen.guide, torch.randn(4, 2))
        >>> gen.net.net.output.weight.grad is not None
        True
    """

    def __init__(self, loss_fn: Callable[..., torch.Tensor]) -> None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be a callable surrogate loss, got {type(loss_fn)}")
        self.loss_fn = loss_fn

    def loss(self, model: Callable[..., Any], guide: Callable[..., Any], *args, **kwargs) -> float:
        """The loss, without gradients."""
        with torch.no_grad():
            return float(self.loss_fn(model, guide, *args, **kwargs))

    def loss_and_grads(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args, **kwargs
    ) -> float:
        """The loss; its gradient is left on the parameters it depends on."""
        value = self.loss_fn(model, guide, *args, **kwargs)
        if getattr(value, "requires_grad", False):
            value.backward()
        return float(value.detach())

    def __repr__(self) -> str:
        return f"SurrogateLoss({self.loss_fn!r})"
