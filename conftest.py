"""Root pytest configuration: doctests in pyro_gen/ get a fixed seed and a clean param store."""

from __future__ import annotations

import importlib.util

import pyro
import pytest

collect_ignore = ["pyro_gen/__main__.py", "tutorials", "benchmarks"]
# The Lightning adapter is an optional extra: without it, its doctests cannot import.
if importlib.util.find_spec("lightning") is None:
    collect_ignore.append("pyro_gen/lightning.py")


@pytest.fixture(autouse=True)
def _doctest_pyro_state(request: pytest.FixtureRequest) -> None:
    if isinstance(request.node, pytest.DoctestItem):
        pyro.set_rng_seed(0)
        pyro.clear_param_store()
        pyro.enable_validation(True)
