"""Sample quality for MNIST-like images from our own small classifier: Frechet distance of its
penultimate features and what it says about the samples.

These numbers are *not* comparable to the Inception FID of the literature (different network,
different features, 28x28 grayscale); they only compare models scored with the same
classifier, trained with the same seed on the same training set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SmallClassifier", "frechet_distance", "sample_quality", "train_classifier"]


class SmallClassifier(nn.Module):
    """Two conv layers and a 128-unit feature layer for (B, 1, H, W) images in [0, 1].

    Example:
        >>> SmallClassifier(10).features(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 128])
    """

    def __init__(self, num_classes: int = 10, feature_dim: int = 128) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )  # fmt: skip
        self.fc = nn.Linear(32 * 16, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x[:, None]
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> SmallClassifier:
    """Train a :class:`SmallClassifier` with Adam on images in [0, 1] and integer labels.

    Example:
        >>> clf = train_classifier(torch.rand(64, 8, 8), torch.randint(0, 10, (64,)), epochs=1)
        >>> clf.training
        False
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf = SmallClassifier(int(y.max()) + 1)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval()


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """:math:`\\|\\mu_1 - \\mu_2\\|^2 + \\mathrm{tr}(\\Sigma_1 + \\Sigma_2 -
    2(\\Sigma_1\\Sigma_2)^{1/2})` between Gaussians fitted to two feature sets.

    References:
        Heusel et al. GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
        Equilibrium. arXiv:1706.08500.

    Example:
        >>> f = torch.randn(500, 3)
        >>> frechet_distance(f, f) < 1e-6
        True
    """
    a, b = f1.double().numpy(), f2.double().numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr((S1 S2)^{1/2}) via the eigenvalues of sqrt(S1) S2 sqrt(S1), which is symmetric PSD.
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_sqrt = np.sqrt(np.clip(ev, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


@dataclass
class QualityScore:
    frechet: float  #: Frechet distance between classifier features of samples and real data
    confidence: float  #: mean max class probability on samples (sharp digits score high)
    class_kl: float  #: KL(class histogram of samples || uniform): mode dropping raises it
    real_accuracy: float  #: classifier accuracy on the real held-out images (sanity check)


@torch.no_grad()
def sample_quality(
    clf: SmallClassifier,
    samples: torch.Tensor,
    real: torch.Tensor,
    real_labels: torch.Tensor | None = None,
) -> QualityScore:
    """Score samples against real held-out images with a trained classifier.

    Unconditional samples have no labels, so "accuracy on samples" is measured by the
    classifier's confidence on them and by how evenly they spread over the classes; the
    classifier's own accuracy on ``real`` (when labels are given) shows the features mean
    something. Not comparable to Inception FID (see the module docstring).
    """
    clf = clf.eval()
    fs, fr = clf.features(samples), clf.features(real)
    probs = F.softmax(clf.head(fs), -1)
    hist = probs.argmax(-1).bincount(minlength=probs.shape[-1]).double() / probs.shape[0]
    k = probs.shape[-1]
    class_kl = float((hist * (hist * k).clamp(min=1e-12).log()).sum())
    acc = float("nan")
    if real_labels is not None:
        acc = float((clf.head(fr).argmax(-1) == real_labels).double().mean())
    return QualityScore(
        frechet=frechet_distance(fs, fr),
        confidence=float(probs.max(-1).values.mean()),
        class_kl=class_kl,
        real_accuracy=acc,
    )
