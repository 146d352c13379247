"""``FlowModel.model`` / ``.guide`` observe data of shape ``(B, *event_shape)`` under
``pyro.plate("data", B)``; other shapes are one clear error.

Why: the plate took ``x.shape[0]``, so a single example of shape ``(3,)`` made a plate of 3
over a flow with no batch dims and Pyro broadcast its one density over it: the loss counted
the example three times, with no error. Two batch dims failed inside Pyro with "Value is not
broadcastable with batch_shape+event_shape".
"""

from __future__ import annotations

import pytest
import torch
from pyro import poutine

from pyro_gen.flows import build


def _flow(**options):
    torch.manual_seed(0)
    return build("realnvp", (3,), num_layers=2, hidden_dims=(8,), **options)


def test_a_batch_is_scored_once_per_example() -> None:
    flow = _flow()
    x = torch.randn(4, 3)
    trace = poutine.trace(flow.model).get_trace(x)
    torch.testing.assert_close(trace.log_prob_sum(), flow.log_prob(x).sum())


@pytest.mark.parametrize("shape", [(3,), (2, 4, 3)], ids=["one-example", "two-batch-dims"])
def test_other_shapes_are_refused_by_the_model(shape) -> None:
    with pytest.raises(ValueError, match=r"observe a batch of shape \(B, \*\(3,\)\)"):
        _flow().model(torch.randn(shape))


def test_a_dequantizing_guide_refuses_one_example_too() -> None:
    flow = build("realnvp", (2, 2), num_layers=1, hidden_channels=4, num_blocks=1,
                 dequantization="uniform", num_bins=4)  # fmt: skip
    with pytest.raises(ValueError, match=r"x.unsqueeze\(0\)"):
        flow.guide(torch.zeros(2, 2))
