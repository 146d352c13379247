"""Fixtures of the CUDA tier (see tests/cuda/tier.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_kernels() -> None:
    # cuDNN's autotuner may pick another convolution algorithm in a resumed run; fixed
    # algorithms make a resumed run's arithmetic that of the uninterrupted one.
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
