"""AutoAmortizedNormal on a model whose data is a LongTensor of counts: the encoder reads
floating-point arguments only (integer ones are taken for indices or labels), and the error
said "found no ... floating-point tensor argument" without naming the argument it had left
out. It now names it with its dtype and shape and says what to pass; the advice works."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_gen.vae import AutoAmortizedNormal


def poisson_model(counts: torch.Tensor) -> None:
    with pyro.plate("data", counts.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        rate = z.exp().sum(-1, keepdim=True).expand(-1, 3)
        pyro.sample("obs", dist.Poisson(rate).to_event(1), obs=counts)


def _counts() -> torch.Tensor:
    return torch.poisson(torch.full((10, 3), 2.0), generator=torch.Generator().manual_seed(0))


NAMED = r"argument 'counts', a torch\.int64 tensor of shape \(10, 3\), was left out"
ADVICE = r"counts\.float\(\) to model and guide, or give input_fn"


@pytest.mark.parametrize("plate_name", [None, "data"])
def test_integer_counts_are_named_with_what_to_pass(plate_name):
    """Found by size (no plate has inputs) or named (the plate has none): both errors name it."""
    pyro.clear_param_store()
    guide = AutoAmortizedNormal(poisson_model, hidden_dims=(4,), plate_name=plate_name)
    with pytest.raises(ValueError, match=f"{NAMED}.*{ADVICE}"):
        guide(_counts().long())


def test_an_integer_argument_is_named_by_position_when_the_model_takes_args():
    pyro.clear_param_store()
    guide = AutoAmortizedNormal(lambda *data: poisson_model(*data), hidden_dims=(4,))
    with pytest.raises(ValueError, match=r"argument 'data\[0\]'.*data\[0\]\.float\(\)"):
        guide(_counts().long())


@pytest.mark.parametrize("advice", ["float", "input_fn"])
def test_following_the_advice_trains(advice):
    pyro.clear_param_store()
    counts = _counts().long()
    if advice == "float":
        guide, data = AutoAmortizedNormal(poisson_model, hidden_dims=(4,)), counts.float()
    else:
        guide = AutoAmortizedNormal(
            poisson_model, hidden_dims=(4,), input_fn=lambda counts: counts.float()
        )
        data = counts
    svi = SVI(poisson_model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(data) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert guide.local_sites.keys() == {"z"}
