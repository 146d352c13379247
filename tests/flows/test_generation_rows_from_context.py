"""A conditional ``FlowModel.model(None, y=...)`` draws one example per row of the context
``y``; a ``num_samples`` that was neither 1 (the default) nor the number of rows was silently
ignored (``model(None, num_samples=7, y=three_rows)`` drew 3). It is one clear error now. A
single context row of shape ``(C,)`` is shared by ``num_samples`` draws, as before.

The flow shifts the second coordinate by ``100 * y``, so each draw lies within 6 of its own
row's shift (a standard normal around it)."""

from __future__ import annotations

import pytest
import torch

from pyro_gen.flows.base import FlowModel
from pyro_gen.transforms import Affine, ConditionalCoupling, alternating_mask

SHIFT = 100.0


def _shift_by_context(h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    shift = SHIFT * context
    return torch.cat([shift, torch.zeros_like(shift)], -1)


def _flow() -> FlowModel:
    return FlowModel((2,), [ConditionalCoupling(alternating_mask(2), _shift_by_context, Affine())])


def test_a_num_samples_other_than_the_rows_is_one_error() -> None:
    torch.manual_seed(0)
    flow, y = _flow(), torch.tensor([[-1.0], [0.0], [1.0]])
    for num_samples in (1, 3):  # the default, or the rows: one draw per row
        x = flow.model(None, num_samples=num_samples, y=y)
        assert x.shape == (3, 2)
        assert (x[:, 1] - SHIFT * y[:, 0]).abs().max() < 6.0
    with pytest.raises(ValueError, match=r"per row of y, which holds 3: leave num_samples"):
        flow.model(None, num_samples=7, y=y)


def test_one_context_row_is_shared_by_num_samples_draws() -> None:
    torch.manual_seed(0)
    x = _flow().model(None, num_samples=4, y=torch.tensor([1.0]))
    assert x.shape == (4, 2)
    assert (x[:, 1] - SHIFT).abs().max() < 6.0
