"""Diagnostics for trained VAEs: active units, KL per latent dimension, posterior
collapse warning, latent interpolation, reconstruction grids and latent plots.

Plotting helpers import matplotlib lazily; everything else returns tensors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn

from pyro_gen.vae.decoding import interpolation, reconstruct
from pyro_gen.vae.guide_slot import GuideSlot
from pyro_gen.vae.latent_statistics import latent_statistics


class PosteriorCollapseWarning(UserWarning):
    """Few latent dimensions carry information about the data."""


@torch.no_grad()
def posterior_params(
    vae: nn.Module, x: torch.Tensor, batch_size: int = 500, **context
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loc and scale of the amortized Normal posterior :math:`q(z \\mid x)` (for a flow
    posterior family, the Normal before the flow steps), batched, each ``(N, z_dim)``."""
    family = getattr(vae, "posterior", None)
    if family is None or not hasattr(family, "encode") or getattr(vae, "custom_guide", None):
        raise TypeError(
            "these diagnostics need a VAE using its built-in guide with a posterior family "
            "that has encode(x) -> (loc, scale)"
        )
    locs, scales = [], []
    ctx = vae._context(context.get("y")) if hasattr(vae, "_context") else None
    for i in range(0, x.shape[0], batch_size):
        c = None if ctx is None else ctx[i : i + batch_size]
        loc, scale = family.encode(x[i : i + batch_size], c)
        locs.append(loc)
        scales.append(scale)
    return torch.cat(locs), torch.cat(scales)


def own_posterior_family(vae: Any, guide: Any, site: str | None) -> bool:
    """Whether ``vae`` is a pyro_gen VAE asked about its own guide (no ``guide=`` or
    ``site=``), whose posterior family gives ``encode(x) -> (loc, scale)`` directly.

    Example:
        >>> from pyro_gen.vae import VAE
        >>> vae = VAE((4,), 2, 8)
        >>> own_posterior_family(vae, None, None), own_posterior_family(vae, None, "z")
        (True, False)
    """
    family = getattr(vae, "posterior", None)
    return (
        guide is None
        and site is None
        and hasattr(family, "encode")
        and not getattr(vae, "custom_guide", None)
    )


@torch.no_grad()
def active_units(
    vae: Any,
    x: torch.Tensor,
    threshold: float = 0.01,
    *,
    guide: Any = None,
    site: str | None = None,
    **context,
) -> tuple[int, torch.Tensor]:
    """Number of active latent units and the activity of each,

    .. math:: A_u = \\operatorname{Cov}_x\\big(\\mathbb{E}_{q(z \\mid x)}[z_u]\\big),
              \\quad u \\text{ active if } A_u > \\text{threshold}.

    ``vae`` is a pyro_gen VAE or a user's Pyro model with ``guide=`` (any guide: an
    autoguide, a flow); ``site`` names the latent where the guide has several (a
    hierarchical VAE's ``"z2"``); see
    :func:`~pyro_gen.vae.latent_statistics.latent_statistics`.

    References:
        Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, arXiv:1509.00519.

    Example:
        >>> from pyro_gen.vae import VAE
        >>> n, activity = active_units(VAE((8, 8), 3, 8), torch.rand(20, 8, 8))
        >>> activity.shape
        torch.Size([3])
    """
    if own_posterior_family(vae, guide, site):
        loc, _ = posterior_params(vae, x, **context)
    else:
        loc, _ = latent_statistics(vae, x, guide=guide, site=site, **context)
    return _activity(loc, threshold)


def _activity(loc: torch.Tensor, threshold: float) -> tuple[int, torch.Tensor]:
    activity = loc.var(0) if loc.shape[0] > 1 else loc.new_zeros(loc.shape[-1])
    return int((activity > threshold).sum()), activity


@torch.no_grad()
def kl_per_dim(
    vae: Any, x: torch.Tensor, *, guide: Any = None, site: str | None = None, **context
) -> torch.Tensor:
    """Average over ``x`` of :math:`\\mathrm{KL}(q(z_j \\mid x) \\,\\|\\, p(z_j))` for each
    latent dimension :math:`j` (analytic; needs a diagonal Normal prior and guide). Models,
    guides and ``site`` as for :func:`active_units`; for a layer of a hierarchical VAE,
    :math:`p(z_j)` is its conditional given the layer above.

    Example:
        >>> from pyro_gen.vae import VAE
        >>> kl_per_dim(VAE((8, 8), 3, 8), torch.rand(4, 8, 8)).shape
        torch.Size([3])
    """
    if not own_posterior_family(vae, guide, site):
        _, kl = latent_statistics(vae, x, guide=guide, site=site, **context)
        if kl is None:
            raise TypeError(
                "per-dimension KL needs diagonal Normal densities of the latent in both the "
                "guide and the model; use active_units for others"
            )
        return kl.mean(0)
    loc, scale = posterior_params(vae, x, **context)
    prior = vae.prior()
    base = getattr(prior, "base_dist", None)
    if not isinstance(base, dist.Normal):
        raise TypeError(
            f"per-dimension KL needs a diagonal Normal prior, got {type(prior).__name__}; "
            "use active_units for other priors"
        )
    return torch.distributions.kl_divergence(dist.Normal(loc, scale), base).mean(0)


def check_posterior_collapse(
    vae: Any,
    x: torch.Tensor,
    threshold: float = 0.01,
    min_active_fraction: float = 0.05,
    *,
    guide: Any = None,
    site: str | None = None,
    **context,
) -> dict[str, Any]:
    """Warn (:class:`PosteriorCollapseWarning`) when fewer than ``min_active_fraction`` of
    the latent dimensions are active (at least one must be); returns the statistics. Models,
    guides and ``site`` as for :func:`active_units`.

    Example:
        >>> from pyro_gen.vae import VAE
        >>> import warnings
        >>> with warnings.catch_warnings(record=True):
        ...     stats = check_posterior_collapse(VAE((8, 8), 3, 8), torch.rand(10, 8, 8))
        >>> sorted(stats)
        ['active_units', 'activity', 'collapsed', 'kl_per_dim', 'z_dim']
    """
    if own_posterior_family(vae, guide, site):
        n, activity = active_units(vae, x, threshold, **context)
        try:
            kl = kl_per_dim(vae, x, **context)
        except TypeError:
            kl = None
    else:  # one pass of guide and model gives both
        mean, kl_all = latent_statistics(vae, x, guide=guide, site=site, **context)
        n, activity = _activity(mean, threshold)
        kl = None if kl_all is None else kl_all.mean(0)
    z_dim = activity.numel()
    collapsed = n < max(1, math.ceil(min_active_fraction * z_dim))
    if collapsed:
        warnings.warn(
            f"posterior collapse: only {n} of {z_dim} latent units are active "
            f"(Cov_x E[z|x] > {threshold}); try KL warm-up, free bits or a weaker decoder",
            PosteriorCollapseWarning,
            stacklevel=2,
        )
    return {
        "active_units": n,
        "z_dim": z_dim,
        "activity": activity,
        "kl_per_dim": kl,
        "collapsed": collapsed,
    }


def _own_decoder(vae: Any, guide: Any, *names: Any) -> bool:
    # a pyro_gen VAE with its own guide decodes with its networks directly (a user's module
    # may have encode/decode methods of its own meaning: it goes through its model and guide)
    return (
        guide is None
        and all(n is None for n in names)
        and isinstance(vae, GuideSlot)
        and vae.custom_guide is None
    )


@torch.no_grad()
def interpolate(
    vae: Any,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    steps: int = 8,
    *,
    guide: Callable | None = None,
    latent: str | None = None,
    site: str | None = None,
    num_draws: int = 64,
    **context: Any,
) -> torch.Tensor:
    """Decoded examples along the straight line between the posterior means of two
    examples, shape ``(steps, *x_a.shape)``.

    A pyro_gen VAE with its own guide decodes with its networks. Any other model and guide
    (a user's Pyro model callable with ``guide=``, or an assigned guide) are read through
    their traces (:func:`~pyro_gen.vae.decoding.interpolation`): every latent of the data
    plate at the guide's point estimate (mean; the average of ``num_draws`` draws for a
    flow), moved along the line (only ``latent`` if given; the model draws the others),
    decoded as the mean of the model's observed site of the data (``site`` if several).

    Args:
        vae: a pyro_gen VAE, or a Pyro model callable ``model(x, **context)``.
        x_a, x_b: the two examples (without a batch dimension).
        steps: points on the line, both ends included.
        guide: a Pyro guide (default: the module's).
        latent: the one latent site to interpolate.
        site: the model's observed site of the data.
        num_draws: draws for a latent whose mean has no closed form.
        **context: further arguments of model and guide, broadcast over the examples.

    Example:
        >>> from pyro_gen.vae import VAE
        >>> interpolate(VAE((8, 8), 2, 8), torch.rand(8, 8), torch.rand(8, 8), 5).shape
        torch.Size([5, 8, 8])
    """
    if _own_decoder(vae, guide, latent, site) and not context:
        z = vae.encode(torch.stack([x_a, x_b]))
        t = torch.linspace(0, 1, steps, device=z.device, dtype=z.dtype)[:, None]
        return vae.decode((1 - t) * z[0] + t * z[1])
    return interpolation(
        vae,
        x_a,
        x_b,
        steps,
        guide=guide,
        latent=latent,
        site=site,
        num_draws=num_draws,
        context=context,
    )


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 1) -> torch.Tensor:
    """Tile ``(N, H, W)`` or ``(N, C, H, W)`` images into one ``(H', W')`` or
    ``(C, H', W')`` image, ``nrow`` images per row.

    Example:
        >>> image_grid(torch.zeros(6, 4, 4), nrow=3).shape
        torch.Size([9, 14])
    """
    if images.dim() not in (3, 4):
        raise ValueError(
            f"image_grid takes images of shape (N, H, W) or (N, C, H, W), got "
            f"{tuple(images.shape)}: reshape flat examples first (reconstruction_grid "
            "takes image_shape=(H, W))"
        )
    gray = images.dim() == 3
    if gray:
        images = images[:, None]
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = images.new_ones(c, rows * (h + pad) - pad, nrow * (w + pad) - pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = images[
            i
        ]
    return grid[0] if gray else grid


@torch.no_grad()
def reconstruction_grid(
    vae: Any,
    x: torch.Tensor,
    nrow: int = 8,
    *,
    guide: Callable | None = None,
    site: str | None = None,
    image_shape: Sequence[int] | None = None,
    **context: Any,
) -> torch.Tensor:
    """Originals and reconstructions in alternating rows of ``nrow`` images.

    A pyro_gen VAE with its own guide reconstructs with its networks; any other model and
    guide through :func:`~pyro_gen.vae.decoding.reconstruct` (the model's mean of x at the
    guide's posterior mean). ``image_shape`` (e.g. ``(28, 28)``) reshapes flat examples
    into images.

    Example:
        >>> from pyro_gen.vae import VAE
        >>> reconstruction_grid(VAE((8, 8), 2, 8), torch.rand(4, 8, 8), nrow=4).shape
        torch.Size([17, 35])
    """
    if _own_decoder(vae, guide, site) and not context:
        rec = vae.reconstruct(x)
    else:
        rec = reconstruct(vae, x, guide=guide, site=site, **context)
    if image_shape is not None:
        x, rec = x.reshape(-1, *image_shape), rec.reshape(-1, *image_shape)
    rows = []
    for i in range(0, x.shape[0], nrow):
        rows += [x[i : i + nrow].to(rec.dtype), rec[i : i + nrow]]
    return image_grid(torch.cat(rows), nrow=nrow)


def plot_grid(grid: torch.Tensor, path: str | None = None, title: str | None = None):
    """Show or save (``path``) a grid from :func:`image_grid` with matplotlib."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6 * grid.shape[-2] / grid.shape[-1]))
    img = grid.detach().cpu()
    ax.imshow(img.permute(1, 2, 0) if img.dim() == 3 else img, cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title)
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
    return fig


def plot_aggregate_posterior(
    vae: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    path: str | None = None,
):
    """Scatter the posterior means of a 2-D latent space, coloured by ``labels``."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    z = vae.encode(x).cpu()
    if z.shape[-1] != 2:
        raise ValueError(f"the aggregate posterior plot needs a 2-D latent, got {z.shape[-1]}")
    fig, ax = plt.subplots(figsize=(5, 5))
    sc = ax.scatter(z[:, 0], z[:, 1], c=None if labels is None else labels.cpu(), s=4, cmap="tab10")
    if labels is not None:
        fig.colorbar(sc, ax=ax)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
    return fig
