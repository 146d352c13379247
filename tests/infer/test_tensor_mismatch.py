"""explain_mismatch on torch's own refusals: integer data given to float networks are named
in each way torch words it, while a refusal of floats where integers belong (an embedding's
float indices, cross-entropy's float targets) goes through untouched even though the batch
also holds integers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_gen.data.batching import Call
from pyro_gen.infer.tensor_mismatch import BatchMismatchError, explain_mismatch

EXPLAINED = {
    "linear, uint8": (lambda: nn.Linear(4, 2), torch.uint8, lambda m, x: m(x), "uint8"),
    "conv, uint8": (
        lambda: nn.Conv2d(1, 1, 3),
        torch.uint8,
        lambda m, x: m(x.reshape(2, 1, 2, 2).repeat(1, 1, 2, 2)),
        "uint8",
    ),
    "matmul, int64": (lambda: nn.Linear(4, 2), torch.int64, lambda m, x: m.weight @ x.T, "int64"),
    "batch norm, uint8": (lambda: nn.BatchNorm1d(4), torch.uint8, lambda m, x: m(x), "uint8"),
    "linear, int32": (lambda: nn.Linear(4, 2), torch.int32, lambda m, x: m(x), "int32"),
}


def _refusal(run, module, x) -> RuntimeError:
    with pytest.raises(RuntimeError) as info:
        run(module, x)
    return info.value


@pytest.mark.parametrize("case", list(EXPLAINED))
def test_integer_data_refused_by_a_float_network_are_named(case):
    make, dtype, run, name = EXPLAINED[case]
    module, x = make(), torch.zeros(2, 4, dtype=dtype)
    error = _refusal(run, module, x)
    with pytest.raises(BatchMismatchError, match=rf"the batch holds {name} values where a network"):
        explain_mismatch(error, Call((x,)), [module])


@pytest.mark.parametrize(
    "run",
    [
        lambda m, x, y: m(x),  # an embedding given float indices
        lambda m, x, y: nn.functional.cross_entropy(torch.zeros(2, 3), x),  # float targets
    ],
    ids=["embedding", "cross-entropy"],
)
def test_floats_refused_where_integers_belong_go_through_untouched(run):
    module = nn.Embedding(3, 2)
    x, labels = torch.zeros(2), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(RuntimeError) as info:
        run(module, x, labels)
    assert explain_mismatch(info.value, Call((x, labels)), [module]) is None
