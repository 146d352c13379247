"""M1+M2 (Kingma et al. 2014): the M2 semi-supervised model trained on the latent features
of a VAE (M1) that has seen all the images.

M1 is a plain VAE :math:`p(z_1)\\,p(x \\mid z_1)` trained on every image, labelled or not.
Its posterior :math:`q(z_1 \\mid x) = \\mathcal{N}(\\mu(x), \\operatorname{diag}\\sigma^2(x))`
turns an image into a few dozen real numbers in which the classes lie much further apart
than in pixel space. M2 (:class:`~pyro_gen.vae.semi_supervised.SSVAE` with a Gaussian
likelihood, ``likelihood="gaussian_learned"``) then models those features,

.. math:: p(y)\\,p(z_2)\\,p(z_1 \\mid y, z_2), \\qquad q(y \\mid z_1)\\,q(z_2 \\mid z_1, y),

with the label enumerated for unlabelled examples exactly as on pixels. As in Kingma et
al.'s code, only M1's *active* latent units are kept (the standard deviation of
:math:`\\mu(x)` over the data above 0.1; the rest carry no information about :math:`x`),
M2 sees a fresh draw :math:`z_1 \\sim q(z_1 \\mid x)` every time it sees an example
(``semi_supervised_batches(..., labelled_scale=, unlabelled_scale=)``), and classification
uses the posterior mean :math:`\\mu(x)`.

References:
    Kingma, Rezende, Mohamed & Welling, Semi-Supervised Learning with Deep Generative
    Models, NeurIPS 2014, arXiv:1406.5298 (section 3.1 and the M1+M2 rows of table 1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from pyro_gen.infer.module_modes import evaluation_mode
from pyro_gen.transforms._base import PicklableModule
from pyro_gen.vae.diagnostics import posterior_params
from pyro_gen.vae.semi_supervised import SSVAE


class LatentFeatures(NamedTuple):
    """M1's posterior over the kept units: ``loc`` and ``scale`` of shape ``(N, d)`` and the
    boolean mask ``keep`` of shape ``(z_dim,)`` that chose the ``d`` units."""

    loc: torch.Tensor
    scale: torch.Tensor
    keep: torch.Tensor


@torch.no_grad()
def latent_features(
    m1: nn.Module,
    x: torch.Tensor,
    keep: torch.Tensor | None = None,
    min_std: float = 0.1,
    batch_size: int = 500,
) -> LatentFeatures:
    """The features of M1+M2: mean and scale of M1's posterior :math:`q(z_1 \\mid x)` on its
    active units.

    Args:
        m1: a trained VAE with its built-in guide (a posterior family with
            ``encode(x) -> (loc, scale)``, such as :class:`~pyro_gen.vae.VAE`'s default).
        x: the examples, shape ``(N, *event_shape)``.
        keep: which latent units to keep; None chooses the active ones on ``x`` (pass the
            mask found on the training images when encoding test images, so both have the
            same units).
        min_std: a unit is active when the standard deviation of its posterior mean over
            ``x`` exceeds this (Kingma et al.'s 0.1).
        batch_size: examples encoded at a time.

    Returns:
        :class:`LatentFeatures` ``(loc, scale, keep)``.

    Raises:
        ValueError: ``keep`` does not have one entry per latent unit or keeps none, no unit
            is active, or ``min_std`` is negative.
        TypeError: ``m1`` has no posterior family with ``encode`` (a replaced guide).

    Example:
        >>> from pyro_gen.vae import VAE
        >>> m1 = VAE((4, 4), z_dim=3, hidden_dim=8)
        >>> with torch.no_grad():  # unit 1 ignores the image: inactive
        ...     m1.posterior.encoder.loc.weight[1] = 0.0
        >>> f = latent_features(m1, torch.rand(20, 4, 4), min_std=1e-3)  # an untrained M1
        >>> f.keep.tolist(), f.loc.shape
        ([True, False, True], torch.Size([20, 2]))
    """
    if not min_std >= 0:
        raise ValueError(f"min_std must be non-negative, got {min_std!r}")
    with evaluation_mode([m1]):  # given back module by module: a frozen part stays frozen
        loc, scale = posterior_params(m1, x, batch_size=batch_size)
    if keep is None:
        std = loc.std(0) if loc.shape[0] > 1 else torch.zeros(loc.shape[-1])
        keep = std > min_std
        if not keep.any():
            raise ValueError(
                f"no latent unit of M1 is active (largest std of the posterior mean over x: "
                f"{float(std.max()):.3g} <= min_std={min_std}); train M1 longer, or lower "
                f"min_std"
            )
    elif keep.dtype != torch.bool or keep.shape != loc.shape[-1:] or not keep.any():
        raise ValueError(
            f"keep must be a boolean mask with one entry per latent unit of M1, shape "
            f"({loc.shape[-1]},), keeping at least one; got {keep.dtype} of shape "
            f"{tuple(keep.shape)}"
        )
    return LatentFeatures(loc[:, keep], scale[:, keep], keep)


class M1M2(PicklableModule):
    """The M1+M2 classifier: an image goes to M1's posterior mean on the kept units, then to
    M2's :math:`q(y \\mid z_1)`.

    Train M1 (any VAE with a posterior family) on all the images, take
    :func:`latent_features` of the training images, train an
    :class:`~pyro_gen.vae.semi_supervised.SSVAE` on them (event shape ``(d,)``,
    ``likelihood="gaussian_learned"``) with :func:`~pyro_gen.infer.fit` and
    ``TraceEnum_ELBO``, then wrap both here to classify new images. Give M2 a ``name`` so
    that its networks and M1's have different names in Pyro's param store.

    Args:
        m1: the trained VAE.
        m2: the M2 model trained on M1's features.
        keep: the mask of M1's units that M2 was trained on (``latent_features(...).keep``).

    Raises:
        ValueError: M2's event shape is not ``(number of kept units,)``.

    Example:
        >>> import pyro
        >>> from pyro.infer import TraceEnum_ELBO
        >>> from pyro_gen.infer import fit
        >>> from pyro_gen.vae import VAE, SSVAE, semi_supervised_batches
        >>> x, y = torch.rand(30, 4, 4), torch.arange(30) % 3
        >>> m1 = VAE((4, 4), z_dim=3, hidden_dim=8)
        >>> _ = fit(m1, x, epochs=1, progress=False)
        >>> f = latent_features(m1, x, min_std=0.0)
        >>> m2 = SSVAE((int(f.keep.sum()),), 3, z_dim=2, hidden_dims=(8,),
        ...            likelihood="gaussian_learned", name="m2")
        >>> batches = semi_supervised_batches(f.loc[:6], y[:6], f.loc[6:], batch_size=8,
        ...                                   labelled_scale=f.scale[:6],
        ...                                   unlabelled_scale=f.scale[6:])
        >>> elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
        >>> _ = fit(m2, batches, loss=elbo, epochs=1, progress=False)
        >>> M1M2(m1, m2, f.keep).classify(torch.rand(5, 4, 4)).shape
        torch.Size([5])
    """

    def __init__(self, m1: nn.Module, m2: SSVAE, keep: torch.Tensor) -> None:
        super().__init__()
        d = int(keep.sum())
        if tuple(m2.event_shape) != (d,):
            raise ValueError(
                f"M2 must model the {d} kept units of M1 (event_shape ({d},)), got "
                f"event_shape {tuple(m2.event_shape)}"
            )
        self.m1, self.m2 = m1, m2
        self.register_buffer("keep", keep.clone())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """M1's posterior mean on the kept units, shape ``(batch, d)``."""
        return latent_features(self.m1, x, keep=self.keep).loc

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of :math:`q(y \\mid \\mu(x))`, shape ``(batch, C)``."""
        return self.m2.logits(self.features(x))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable label, shape ``(batch,)``."""
        return self.logits(x).argmax(-1)


__all__ = ["LatentFeatures", "M1M2", "latent_features"]
