"""The Frechet distance between Gaussians fitted to two feature sets, in torch on the
features' device."""

from __future__ import annotations

import torch


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """:math:`\\|\\mu_1 - \\mu_2\\|^2 + \\mathrm{tr}(\\Sigma_1 + \\Sigma_2 -
    2(\\Sigma_1\\Sigma_2)^{1/2})` between Gaussians fitted to the rows of ``f1`` and ``f2``
    (the FID formula, here on any features).

    Computed in float64 on the features' device. The trace of the matrix square root is
    :math:`\\sum_i \\sqrt{\\lambda_i}` over the eigenvalues of the symmetric PSD matrix
    :math:`\\Sigma_1^{1/2}\\Sigma_2\\Sigma_1^{1/2}`, which has the eigenvalues of
    :math:`\\Sigma_1\\Sigma_2`.

    Args:
        f1: features, shape ``(N1, D)``.
        f2: features, shape ``(N2, D)``.

    References:
        Heusel et al. GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
        Equilibrium. arXiv:1706.08500.

    Example:
        >>> f = torch.randn(500, 3)
        >>> frechet_distance(f, f) < 1e-6
        True
        >>> round(frechet_distance(torch.zeros(4, 2), torch.ones(4, 2)), 6)  # |mu1 - mu2|^2
        2.0
    """
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(
            f"features must be matrices (N, D) of the same width, got {tuple(f1.shape)} and "
            f"{tuple(f2.shape)}"
        )
    if f1.shape[0] < 2 or f2.shape[0] < 2:
        raise ValueError("each feature set needs at least 2 rows to estimate a covariance")
    for name, f in (("f1", f1), ("f2", f2)):
        # a NaN or inf row would make the distance NaN (or a finite-looking wrong number)
        # with nothing to say which set held it
        if not bool(torch.isfinite(f).all()):
            raise ValueError(
                f"{name} holds NaN or infinite values; drop those rows (a diverged model's "
                "samples) before computing the distance"
            )
    a, b = f1.detach().double(), f2.detach().to(f1.device).double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    w, v = torch.linalg.eigh(s1)
    r1 = (v * w.clamp(min=0).sqrt()) @ v.T
    m = r1 @ s2 @ r1
    ev = torch.linalg.eigvalsh((m + m.T) / 2)  # symmetric up to rounding
    tr_sqrt = ev.clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt)
