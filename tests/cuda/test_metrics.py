"""Sample-quality metrics on CUDA tensors give the CPU's values: a classifier trained on the
device, its Frechet distance, class coverage and label agreement, and mode coverage."""

from __future__ import annotations

import pytest
import torch

from pyro_gen.data import load
from pyro_gen.metrics import (
    frechet_distance,
    label_agreement,
    mode_coverage,
    ring_modes,
    sample_modes,
    sample_quality,
    train_classifier,
)
from tests.cuda.tier import DEVICE, MARKS

pytestmark = MARKS


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load("digits", "train")
    x_test, y_test = load("digits", "test")
    return x.float() / 16, y, x_test.float() / 16, y_test


def test_classifier_scores_match_the_cpu():
    x, y, x_test, y_test = _digits()
    scores = {}
    for device in ("cpu", DEVICE):
        # the same seed gives the same weights and batch order on every device
        clf = train_classifier(x.to(device), y.to(device), epochs=2, batch_size=64)
        assert next(clf.parameters()).device.type == torch.device(device).type
        noisy = (
            x_test + 0.3 * torch.rand(x_test.shape, generator=torch.Generator().manual_seed(0))
        ).clamp(0, 1)
        quality = sample_quality(clf, noisy.to(device), x_test.to(device), y_test.to(device))
        agreement, _ = label_agreement(clf, x_test.to(device), y_test.to(device))
        scores[str(device)] = (quality.frechet, quality.real_accuracy, agreement)
    cpu, dev = scores["cpu"], scores[str(DEVICE)]
    assert cpu[1] > 0.8  # the classifier learned the digits
    assert dev[0] == pytest.approx(cpu[0], rel=0.05)
    assert dev[1] == pytest.approx(cpu[1], abs=0.03) and dev[2] == pytest.approx(cpu[2], abs=0.03)


def test_frechet_distance_and_mode_coverage_on_the_device():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 16, generator=g), torch.randn(500, 16, generator=g) + 0.5
    expected = frechet_distance(a, b)
    assert frechet_distance(a.to(DEVICE), b.to(DEVICE)) == pytest.approx(expected, rel=1e-6)
    centers = ring_modes()
    x = sample_modes(centers, 0.05, 2000, generator=g)
    cpu = mode_coverage(x, centers, 0.05)
    dev = mode_coverage(x.to(DEVICE), centers.to(DEVICE), 0.05)
    assert cpu.modes == 8 and (dev.modes, dev.high_quality) == (cpu.modes, cpu.high_quality)
    assert dev.counts.device.type == DEVICE.type
    assert torch.equal(dev.counts.cpu(), cpu.counts)
