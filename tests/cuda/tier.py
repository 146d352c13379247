"""What every test of the CUDA tier shares: the device and the marker.

The tier runs on CUDA and is marked ``requires_cuda`` (tests/conftest.py skips it without a
GPU). ``PYRO_GEN_TIER_DEVICE=cpu pytest tests/cuda`` runs the same checks on the CPU, unmarked,
to check the tests themselves on a machine without a GPU.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

DEVICE = torch.device(os.environ.get("PYRO_GEN_TIER_DEVICE", "cuda"))
MARKS = [] if DEVICE.type == "cpu" else [pytest.mark.requires_cuda]

#: what the compiled step logs when it records a program, and when it falls back to Pyro
RECORDED = "recorded the ELBO step"
FELL_BACK = "compiled SVI step off"


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ``pyro_gen`` log lines captured so far."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("pyro_gen")]


def compiled_step_ran(caplog: pytest.LogCaptureFixture) -> None:
    """Asserts that fit's compiled step recorded its program and never fell back."""
    lines = messages(caplog)
    assert any(RECORDED in m for m in lines), lines
    assert not any(FELL_BACK in m for m in lines), lines


def capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyro_gen")
