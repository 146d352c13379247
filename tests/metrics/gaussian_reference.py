"""The Frechet distance between two Gaussians from its formula, as the metrics' tests check
``frechet_distance`` against it: scipy's matrix square root where scipy is installed (it is
no dependency of pyro_gen, and the tests failed to import without it), else an
eigendecomposition."""

from __future__ import annotations

import numpy as np

try:
    import scipy.linalg
except ImportError:  # pragma: no cover - scipy comes with the dev extras' scikit-learn
    scipy = None


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, *, use_scipy: bool | None = None) -> float:
    """:math:`\\mathrm{tr}(S_1 S_2)^{1/2}` for covariances ``s1`` and ``s2``: with scipy,
    ``sqrtm(s1 @ s2)``; without, the square roots of the eigenvalues of
    :math:`S_1^{1/2} S_2 S_1^{1/2}`, which has the eigenvalues of :math:`S_1 S_2`."""
    if use_scipy is None:
        use_scipy = scipy is not None
    if use_scipy:
        return float(np.trace(scipy.linalg.sqrtm(s1 @ s2).real))
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum())


def gaussian_frechet(m1, s1, m2, s2, *, use_scipy: bool | None = None) -> float:  # noqa: ANN001
    """:math:`\\|m_1 - m_2\\|^2 + \\mathrm{tr}(S_1 + S_2 - 2 (S_1 S_2)^{1/2})`."""
    mean = float(((np.asarray(m1) - np.asarray(m2)) ** 2).sum())
    return mean + float(np.trace(s1 + s2)) - 2 * trace_sqrt_product(s1, s2, use_scipy=use_scipy)
