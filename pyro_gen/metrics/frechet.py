"""The Frechet distance between Gaussians fitted to two feature sets, in torch on the
features' device."""

from __future__ import annotations

import numpy as np
import torch

from pyro_gen.metrics.inputs import as_tensor


def frechet_distance(f1: torch.Tensor | np.ndarray, f2: torch.Tensor | np.ndarray) -> float:
    """:math:`\\|\\mu_1 - \\mu_2\\|^2 + \\mathrm{tr}(\\Sigma_1 + \\Sigma_2 -
    2(\\Sigma_1\\Sigma_2)^{1/2})` between Gaussians fitted to the rows of ``f1`` and ``f2``
    (the FID formula, here on any features).

    Computed in float64 on the features' device, from the centred features rather than
    their covariances: with :math:`X_i = Q_i R_i` (thin QR of the centred rows),
    :math:`\\mathrm{tr}(\\Sigma_1\\Sigma_2)^{1/2}` is the sum of the singular values of
    :math:`R_1 R_2^T / \\sqrt{(N_1 - 1)(N_2 - 1)}`, which stays accurate for singular
    covariances (more features than samples) and large offsets.

    Args:
        f1: features, shape ``(N1, D)``, a tensor or numpy array.
        f2: features, shape ``(N2, D)``, a tensor or numpy array.

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
    # features a user computed in numpy (or saved with np.save) failed with "'numpy.ndarray'
    # object has no attribute 'dim'"
    f1, f2 = as_tensor(f1, "f1", "features (N, D)"), as_tensor(f2, "f2", "features (N, D)")
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        # the bare "must be matrices" left the user to guess the repair; how draws become
        # rows (pooled, or one distance per draw) is the user's choice, so both are named
        hint = ""
        if min(f1.dim(), f2.dim()) == 1:
            hint = ": one feature per row is (N, 1), e.g. f.reshape(-1, 1)"
        elif max(f1.dim(), f2.dim()) > 2:
            hint = (
                ": pool pyro.infer.Predictive's draws (num_samples, N, D) with "
                "f.reshape(-1, f.shape[-1]), or score each draw f[i] apart"
            )
        raise ValueError(
            f"features must be matrices (N, D) of the same width, got {tuple(f1.shape)} and "
            f"{tuple(f2.shape)}{hint}"
        )
    # (N, 0) features gave a distance of 0.0, read as "the same distribution"
    if f1.shape[1] == 0:
        raise ValueError(
            f"features must have at least one column, got shapes {tuple(f1.shape)} and "
            f"{tuple(f2.shape)}: pass the classifier's features, one row per example"
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
    # Centred data, never their covariances: R from X = QR factors X^T X = R^T R, so
    # tr((S1 S2)^{1/2}) is the nuclear norm of R1 R2^T / sqrt((n1-1)(n2-1)) (the eigenvalues
    # of S1 S2 are the squared singular values of L1^T L2 for any S = L L^T). Square roots of
    # a covariance's eigenvalues turned rounding noise eps*lambda_max in its null space into
    # sqrt(eps*lambda_max): f against f gave -2.6e-6 at unit scale and -266 at scale 1e4
    # once features outnumbered samples.
    mu1, mu2 = a.mean(0), b.mean(0)
    x, y = a - mu1, b - mu2
    n1, n2 = a.shape[0] - 1, b.shape[0] - 1
    r1, r2 = torch.linalg.qr(x, mode="r")[1], torch.linalg.qr(y, mode="r")[1]
    tr_sqrt = torch.linalg.svdvals(r1 @ r2.T).sum() / (n1 * n2) ** 0.5
    traces = x.square().sum() / n1 + y.square().sum() / n2
    distance = float((mu1 - mu2).square().sum() + traces - 2 * tr_sqrt)
    # the squared Wasserstein-2 distance of two Gaussians is never negative: what remains
    # below 0 is rounding of order eps * (tr S1 + tr S2)
    return max(distance, 0.0)
