"""What the denoising network predicts: eps, x0, v or the score, and the one conversion between
them.

With :math:`x_t = a x_0 + s \\epsilon` (a DDPM step: :math:`a = \\sqrt{\\bar\\alpha_t}`,
:math:`s = \\sqrt{1 - \\bar\\alpha_t}`; any SDE of :mod:`pyro_gen.diffusion.sde`: its
marginal's mean coefficient and standard deviation):

.. math::

    v = a \\epsilon - s x_0, \\qquad
    \\nabla_{x_t} \\log q(x_t \\mid x_0) = -\\epsilon / s,

and conversely :math:`x_0 = (x_t - s\\epsilon)/a = (a x_t - s v)/(a^2 + s^2)`,
:math:`\\epsilon = (x_t - a x_0)/s = (s x_t + a v)/(a^2 + s^2) = -s \\cdot \\text{score}`
(:math:`a^2 + s^2 = 1` for variance-preserving processes).
"""

from __future__ import annotations

import torch

__all__ = ["PARAMETERIZATIONS", "convert", "convert_scaled"]

PARAMETERIZATIONS = ("eps", "x0", "v", "score")


def convert(
    pred: torch.Tensor,
    source: str,
    target: str,
    x_t: torch.Tensor,
    alpha_bar: torch.Tensor,
) -> torch.Tensor:
    """Convert a network prediction between the eps / x0 / v / score parameterizations.

    Every conversion goes through the pair :math:`(x_0, \\epsilon)` determined by ``pred`` and
    ``x_t`` (formulas in the module docstring), so any pair of parameterizations round-trips.

    Args:
        pred: the prediction in parameterization ``source``.
        source: one of ``"eps"``, ``"x0"``, ``"v"``, ``"score"``.
        target: one of the same names.
        x_t: the noisy input the prediction was made from.
        alpha_bar: :math:`\\bar\\alpha_t`, broadcastable against ``x_t``.

    Returns:
        the prediction in parameterization ``target``.

    References:
        Salimans, Ho. Progressive Distillation for Fast Sampling of Diffusion Models
        (v-prediction). arXiv:2202.00512. Song et al. Score-Based Generative Modeling through
        SDEs. arXiv:2011.13456.

    Example:
        >>> x_t, eps, ab = torch.randn(3), torch.randn(3), torch.tensor(0.3)
        >>> v = convert(eps, "eps", "v", x_t, ab)
        >>> torch.allclose(convert(v, "v", "eps", x_t, ab), eps, atol=1e-6)
        True
    """
    return convert_scaled(pred, source, target, x_t, alpha_bar.sqrt(), (1 - alpha_bar).sqrt())


def convert_scaled(
    pred: torch.Tensor,
    source: str,
    target: str,
    x_t: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """:func:`convert` for any Gaussian perturbation :math:`x_t = a x_0 + s \\epsilon`, given
    the mean coefficient ``alpha`` (:math:`a`) and standard deviation ``sigma`` (:math:`s`)
    rather than :math:`\\bar\\alpha_t`; :math:`a^2 + s^2` need not be one (the VE and sub-VP
    SDEs).

    Args:
        pred: the prediction in parameterization ``source``.
        source: one of ``"eps"``, ``"x0"``, ``"v"``, ``"score"``.
        target: one of the same names.
        x_t: the noisy input the prediction was made from.
        alpha: :math:`a`, broadcastable against ``x_t``.
        sigma: :math:`s > 0`, broadcastable against ``x_t``.

    Example:
        >>> x0, eps = torch.randn(3), torch.randn(3)
        >>> a, s = torch.tensor(1.0), torch.tensor(5.0)  # a VE marginal
        >>> x_t = a * x0 + s * eps
        >>> torch.allclose(convert_scaled(-eps / s, "score", "x0", x_t, a, s), x0, atol=1e-5)
        True
    """
    for name in (source, target):
        if name not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {name!r}; choose from {PARAMETERIZATIONS}")
    if source == target:
        return pred
    a, s = alpha, sigma
    if source == "eps":
        eps, x0 = pred, None
    elif source == "score":
        eps, x0 = -s * pred, None
    elif source == "x0":
        eps, x0 = (x_t - a * pred) / s, pred
    else:  # v
        norm = a * a + s * s
        eps, x0 = (s * x_t + a * pred) / norm, (a * x_t - s * pred) / norm
    if target == "eps":
        return eps
    if target == "score":
        return -eps / s
    if x0 is None:
        x0 = (x_t - s * eps) / a
    if target == "x0":
        return x0
    return a * eps - s * x0
