"""The Pyro loss-object protocol of pyro_gen's non-ELBO objectives: ``loss`` (score, train
nothing) and ``loss_and_grads`` (train what the loss owns, leave the model's gradients), as
Pyro's ``SVI`` and :func:`pyro_gen.infer.fit` call them, and when a call may train."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pyro_gen.transforms._base import PicklableModule


class PyroLoss(PicklableModule):
    """A Pyro loss object whose ``forward(model, guide, *args, **kwargs)`` returns the
    differentiable training loss (training whatever the object owns on the way, in
    training mode); ``loss`` and ``loss_and_grads`` are the two methods Pyro's ``SVI`` and
    :func:`pyro_gen.infer.fit` call.

    Example:
        >>> from pyro_gen.gan import Generator, NonSaturatingGAN
        >>> from pyro_gen.nn import MLPDiscriminator, MLPGenerator
        >>> gen = Generator(MLPGenerator(2, (2,), (8,)))
        >>> loss = NonSaturatingGAN(MLPDiscriminator((2,), (8,))).eval()
        >>> value = loss.loss(gen.model, gen.guide, torch.randn(4, 2))  # scores in eval mode
        >>> loss.loss_and_grads(gen.model, gen.guide, torch.randn(4, 2))
        Traceback (most recent call last):
        ...
        RuntimeError: NonSaturatingGAN is in eval mode ...: call loss.train() before training...
    """

    #: how to freeze what the loss owns, for the eval-mode error (see _training_call)
    _freeze_hint = "loss.discriminator.requires_grad_(False)"

    def _training_call(self) -> bool:
        """Whether this call trains (gradients enabled: ``loss_and_grads``, a Lightning
        step), refusing a training call in eval mode while the loss has parameters to train.

        Why an error and not ``fit`` switching the loss to training mode: ``loss.eval()``
        used to mean "score, and train the generator against a discriminator that does not
        learn", so a loss left in eval mode after an evaluation and then passed to ``fit`` or
        ``SVI.step`` trained no discriminator, silently. Pyro's SVI and ``fit`` (like
        Lightning since 2.2) leave modes to the user, and a loss switched back to training
        would silently change a program that froze its discriminator that way on purpose;
        one error, the same from ``fit``, ``SVI`` and Lightning, tells both users what to
        write. Freezing is ``requires_grad_(False)``, torch's idiom (eval mode changes how
        layers run, dropout and batch norm, not whether weights learn): with nothing left to
        train, eval mode is the user's choice for the frozen layers and is kept."""
        if not torch.is_grad_enabled():
            return False
        if not self.training and any(p.requires_grad for p in self.parameters()):
            raise RuntimeError(
                f"{type(self).__name__} is in eval mode (loss.eval(), perhaps left from an "
                "evaluation), where a training call (fit, SVI.step, loss_and_grads) would "
                "train the generator against a discriminator that never learns: call "
                "loss.train() before training. To score without training, use "
                "loss.loss(...) or torch.no_grad(); to train the generator against a fixed "
                f"discriminator, freeze it instead: {self._freeze_hint}"
            )
        return True

    def loss(self, model: Callable[..., Any], guide: Callable[..., Any], *args, **kwargs) -> float:
        """The loss on this batch, without training anything."""
        with torch.no_grad():
            return float(self(model, guide, *args, **kwargs))

    def loss_and_grads(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args, **kwargs
    ) -> float:
        """Trains what the loss owns (a discriminator), then leaves the gradient of the loss
        on the parameters the model and guide registered, and returns the loss."""
        value = self(model, guide, *args, **kwargs)
        if value.requires_grad:
            value.backward()
        return float(value.detach())
