"""A small MNIST-sized classifier whose penultimate features and predictions score samples.

Its Frechet distance is *not* the Inception FID of the literature (different network,
different features, 28x28 grayscale): it only compares models scored with the same
classifier, trained with the same seed on the same training set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyro_gen.metrics.inputs import as_tensor
from pyro_gen.metrics.pixels import as_image_batch, check_unit_interval
from pyro_gen.nn.arguments import check_count


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
        """The penultimate (feature) layer for images ``(B, H, W)``, ``(B, 1, H, W)`` or
        square images flattened to ``(B, H * W)`` (a Bernoulli decoder's ``(B, 784)``)."""
        return F.relu(self.fc(self.conv(as_image_batch(x)).flatten(1)))

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
    """Trains a :class:`SmallClassifier` with Adam on images in [0, 1] and integer labels,
    on the images' device (the same seed gives the same initial weights and batch order
    on every device).

    Example:
        >>> clf = train_classifier(torch.rand(64, 8, 8), torch.randint(0, 10, (64,)), epochs=1)
        >>> clf.training
        False
    """
    # images straight from a user's generator carry its graph: the first batch's backward
    # wrote gradients into the generator, the second failed with "Trying to backward through
    # the graph a second time"; the classifier learns from the pixels only
    x, y = as_tensor(x, "x", "images").detach(), as_tensor(y, "y", "integer labels")
    # a label vector of another length failed mid-epoch with an IndexError, and float labels
    # inside cross_entropy, neither naming the argument
    if y.shape != x.shape[:1] or y.is_floating_point():
        raise ValueError(
            f"y must hold one integer label per image: {x.shape[0]} images, y of shape "
            f"{tuple(y.shape)} and dtype {y.dtype}"
        )
    if x.shape[0] == 0:
        raise ValueError("train_classifier needs at least one image, got none")
    # epochs=0 is the seeded initial classifier
    epochs, batch_size = (
        check_count("epochs", epochs, minimum=0),
        check_count("batch_size", batch_size),
    )
    if int(y.min()) < 0:
        raise ValueError(f"labels must be class indices 0, 1, ..., got {int(y.min())}")
    # float64 or uint8 images failed inside the first conv layer ("Input type (double) and
    # bias type (float) should be the same"), and 0..255 floats trained a classifier that
    # sample_quality then fed [0, 1] pixels
    x = as_image_batch(check_unit_interval(x, "x")).to(torch.get_default_dtype())
    gen = torch.Generator().manual_seed(seed)
    # The weights are drawn on the CPU from its generator alone: torch.manual_seed would
    # also reseed every CUDA generator, which fork_rng(devices=[]) does not restore.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        clf = SmallClassifier(int(y.max()) + 1).to(x.device)
    y = y.to(x.device, torch.long)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval()
