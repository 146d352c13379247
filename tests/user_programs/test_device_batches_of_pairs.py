"""``DeviceBatches`` of aligned tensors as a tuple, as a Pyro user holds ``(images, labels)``
for ``for x, y in batches: svi.step(x, y)`` (the idiom of a ``TensorDataset``). It took one
tensor or a dict, and a tuple was refused with "data holds no tensor: pass a tensor, a
tuple or dict of tensors", naming the form it had been given."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_gen.data import DeviceBatches

X = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
Y = torch.arange(10)


def test_a_tuple_gives_aligned_tuples_in_the_same_order_as_a_dict():
    torch.manual_seed(0)
    pairs = list(DeviceBatches((X, Y), 4))
    torch.manual_seed(0)
    named = list(DeviceBatches({"x": X, "y": Y}, 4))
    assert [tuple(type(t) for t in p) for p in pairs] == [(torch.Tensor, torch.Tensor)] * 3
    for (x, y), batch in zip(pairs, named, strict=True):
        assert torch.equal(x, batch["x"]) and torch.equal(y, batch["y"])
        assert torch.equal(x, X[y])  # rows stay with their labels


def test_pairs_drive_pyros_svi_loop():
    def model(x, y):
        loc = pyro.param("loc", torch.zeros(2, 3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc[y % 2], 1.0).to_event(1), obs=x)

    pyro.clear_param_store()
    svi = SVI(model, lambda x, y: None, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    batches = DeviceBatches((X, Y), 5, shuffle=False)
    assert len(batches) == 2 and batches.num_examples == 10
    for x, y in batches:
        svi.step(x, y)
    assert pyro.param("loc").abs().sum() > 0


def test_an_empty_tuple_is_refused():
    with pytest.raises(ValueError, match="empty tuple"):
        DeviceBatches((), 4)
