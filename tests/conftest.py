"""Shared fixtures: device/dtype options, a fixed seed and a clean Pyro state per test."""

from __future__ import annotations

import pyro
import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # Each xdist worker gets one core; more threads per worker only oversubscribe the CPU.
    torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="device to run tests on (cpu or cuda)")
    parser.addoption("--dtype", default="float32", choices=["float32", "float64"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="requires a CUDA device")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.config.getoption("--device"))


@pytest.fixture
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return getattr(torch, request.config.getoption("--dtype"))


@pytest.fixture(autouse=True)
def _clean_pyro_state() -> None:
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture
def float64_default() -> None:
    """float64 as the default dtype for one test (checks against Pyro to 1e-9 and closer),
    the previous default put back after it."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
