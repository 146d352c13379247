"""Batches with no elements, run over every pyro_gen transform in the registry.

A zero-size batch reaches a transform as the last, empty, minibatch of a split, an empty
subsample of ``pyro.plate`` or an empty mask selection. Torch's own element-wise transforms
take it and return empty results of the right shapes; ours are checked against that: the
map, its inverse and the log-det have the shapes ``forward_shape`` / ``inverse_shape`` and
the domain's event rank give for the same batch with elements, and contain nothing.
"""

from __future__ import annotations

import pytest
import torch

from .registry import CASES, Case
from .test_registry import _concrete, _context, _dtype_for, _prepare  # noqa: F401

OURS = [c for c in CASES if all(cls.__module__.startswith("pyro_gen.") for cls in c.covers)]
EMPTY_BATCHES = [(0,), (2, 0)]


@pytest.mark.parametrize("batch", EMPTY_BATCHES, ids=str)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in OURS])
@pytest.mark.usefixtures("_dtype_for")
def test_an_empty_batch_gives_empty_results_of_the_right_shapes(case: Case, batch) -> None:
    t = _prepare(case)
    ct = _concrete(case, t, _context(case, *batch))
    x = torch.randn(*batch, *case.shape, dtype=torch.float64)
    out = tuple(ct.forward_shape(x.shape))
    ladj_shape = batch + case.shape[: len(case.shape) - ct.domain.event_dim]

    y = ct(x)
    assert tuple(y.shape) == out and y.dtype == x.dtype
    ladj = ct.log_abs_det_jacobian(x, y)
    assert tuple(ladj.shape) == ladj_shape
    if case.invertible:
        y_new = torch.randn(out, dtype=torch.float64)  # a cache miss: really inverts
        x_back = ct.inv(y_new)
        assert tuple(x_back.shape) == x.shape
        assert tuple(ct.log_abs_det_jacobian(x_back, y_new).shape) == ladj_shape
