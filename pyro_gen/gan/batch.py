"""One call's real and generated examples of an observed site, as the adversarial losses
score them: the data in the generated examples' shape, one flat batch of examples, and the
examples the site's mask keeps."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

__all__ = ["AdversarialBatch", "as_generated_shape", "flat", "unmasked"]


@dataclasses.dataclass
class AdversarialBatch:
    """One call's real and generated examples of the observed site.

    Attributes:
        site: name of the observed site.
        real: the data, shape ``batch_shape + event_shape``.
        fake: generated examples of the same shape.
        context: what the discriminator is conditioned on (a one-hot label), or ``None``.
        event_dim: number of event dimensions of the site.
        scale: the site's plate scale (subsampling), applied to the generator's loss.
        mask: the site's mask, or ``None``.
        discrete: the site's distribution when it has no reparameterized sampler, else
            ``None`` (see :class:`~pyro_gen.gan.observed.ObservedSite`).
    """

    site: str
    real: torch.Tensor
    fake: torch.Tensor
    context: torch.Tensor | None
    event_dim: int
    scale: Any = 1.0
    mask: Any = None
    discrete: str | None = None

    @property
    def batch_shape(self) -> torch.Size:
        return self.real.shape[: self.real.dim() - self.event_dim]


def as_generated_shape(
    site: str, real: torch.Tensor, fake: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The data ``real`` of ``site`` in the shape of its generated examples ``fake``: data
    broadcast over a plate outside the data plate (the user's particles,
    ``pyro.plate("particles", n, dim=-2)``) are valid Pyro, where Pyro's ELBO scores each
    particle against the same data, and were refused.

    Example:
        >>> real, fake = as_generated_shape("x", torch.zeros(5, 2), torch.ones(3, 5, 2))
        >>> real.shape
        torch.Size([3, 5, 2])
    """
    if real.shape == fake.shape:
        return real, fake
    try:
        fits = torch.broadcast_shapes(real.shape, fake.shape) == fake.shape
    except RuntimeError:  # shapes that do not broadcast
        fits = False
    if not fits:
        raise ValueError(
            f"site {site!r}: the data have shape {tuple(real.shape)} but the model generates "
            f"{tuple(fake.shape)}; the data must have the generated shape, or broadcast to it "
            "over plates outside the data plate"
        )
    return real.expand(fake.shape), fake


def flat(batch: AdversarialBatch) -> AdversarialBatch:
    """``batch`` with one batch dim: a discriminator is written for ``(batch, *event)``, and
    under an outer plate (a user's groups, vectorized particles) the site's examples have
    more batch dims, which a convolution, batch norm or ``x.view(len(x), -1)`` would fail on
    or misread. The labels (one row per example of the last batch dim), the plate's scale
    and mask follow the examples.

    Example:
        >>> x = torch.zeros(3, 5, 2)
        >>> flat_batch = flat(AdversarialBatch("x", x, x, torch.arange(5), 1))
        >>> flat_batch.real.shape, flat_batch.context.tolist()[:7]
        (torch.Size([15, 2]), [0, 1, 2, 3, 4, 0, 1])
    """
    shape = batch.batch_shape
    if len(shape) <= 1:
        return batch
    event = batch.real.shape[len(shape) :]

    def per_example(value: Any) -> Any:
        if not torch.is_tensor(value) or value.dim() == 0:
            return value
        return value.expand(shape).reshape(-1)

    context = batch.context
    if context is not None and context.dim():
        tail = context.shape[1:]
        context = context.expand(*shape, *tail).reshape(-1, *tail)
    return dataclasses.replace(
        batch,
        real=batch.real.reshape(-1, *event),
        fake=batch.fake.reshape(-1, *event),
        context=context,
        scale=per_example(batch.scale),
        mask=per_example(batch.mask),
    )


def unmasked(batch: AdversarialBatch) -> AdversarialBatch:
    """The examples of ``batch`` that its site's mask keeps, as one flat batch: padding or
    missing examples a model masks out (``poutine.mask``) must not teach the discriminator
    what real data look like, just as they add nothing to the generator's loss.

    Example:
        >>> x = torch.arange(6.0).reshape(3, 2)
        >>> keep = torch.tensor([True, False, True])
        >>> kept = unmasked(AdversarialBatch("x", x, -x, None, 1, mask=keep))
        >>> kept.real.tolist(), kept.fake.shape, kept.mask
        ([[0.0, 1.0], [4.0, 5.0]], torch.Size([2, 2]), None)
    """
    if batch.mask is None or batch.mask is True:
        return batch
    shape = batch.batch_shape
    keep = torch.as_tensor(batch.mask, dtype=torch.bool, device=batch.real.device).expand(shape)
    context = batch.context
    if context is not None:
        context = context.expand(*shape, *context.shape[len(shape) :])[keep]
    return dataclasses.replace(
        batch, real=batch.real[keep], fake=batch.fake[keep], context=context, mask=None
    )
