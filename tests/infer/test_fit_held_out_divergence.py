"""A held-out score that is not finite stops ``fit`` before the epoch is recorded or
checkpointed: the last good checkpoint and ``metrics.jsonl`` (JSON, which has no NaN) are
kept. Before, the epoch was written with ``"test_elbo": -Infinity`` and its checkpoint
replaced the last good one."""

from __future__ import annotations

import json

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.infer import fit
from pyro_gen.infer.checkpoint import CHECKPOINT_NAME, METRICS_NAME
from pyro_gen.infer.checkpoint_read import load_checkpoint
from pyro_gen.infer.fit_read_back import NonFiniteLossError


def model(x):
    scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(0.0, scale), obs=x)


def guide(x):
    pass


def test_a_non_finite_held_out_elbo_keeps_the_last_good_epoch(tmp_path):
    pyro.clear_param_store()
    x = torch.randn(64)
    held_out = torch.tensor([0.0, 1e30])  # its square overflows float32: log p = -inf
    with pytest.raises(NonFiniteLossError, match=r"held-out test_elbo is -inf after epoch 2"):
        fit(
            model,
            x,
            guide=guide,
            epochs=2,
            batch_size=32,
            eval_data=held_out,
            eval_every=2,
            checkpoint_dir=tmp_path,
            progress=False,
        )
    lines = (tmp_path / METRICS_NAME).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["progress"]["epoch"] == 1
