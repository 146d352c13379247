"""What the denoising network predicts: eps, x0, v or the score, and the one conversion between
them.

With :math:`x_t = a x_0 + s \\epsilon`, :math:`a = \\sqrt{\\bar\\alpha_t}`,
:math:`s = \\sqrt{1 - \\bar\\alpha_t}` (so :math:`a^2 + s^2 = 1`):

.. math::

    v = a \\epsilon - s x_0, \\qquad
    \\nabla_{x_t} \\log q(x_t \\mid x_0) = -\\epsilon / s,

and conversely :math:`x_0 = (x_t - s\\epsilon)/a = a x_t - s v`,
:math:`\\epsilon = (x_t - a x_0)/s = s x_t + a v = -s \\cdot \\text{score}`.
"""

from __future__ import annotations

import torch

__all__ = ["PARAMETERIZATIONS", "convert"]

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
    for name in (source, target):
        if name not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {name!r}; choose from {PARAMETERIZATIONS}")
    if source == target:
        return pred
    a = alpha_bar.sqrt()
    s = (1 - alpha_bar).sqrt()
    if source == "eps":
        eps, x0 = pred, None
    elif source == "score":
        eps, x0 = -s * pred, None
    elif source == "x0":
        eps, x0 = (x_t - a * pred) / s, pred
    else:  # v
        eps, x0 = s * x_t + a * pred, a * x_t - s * pred
    if target == "eps":
        return eps
    if target == "score":
        return -eps / s
    if x0 is None:
        x0 = (x_t - s * eps) / a
    if target == "x0":
        return x0
    return a * eps - s * x0
