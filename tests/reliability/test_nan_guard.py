"""NaN at a chosen step, on fit's compiled and plain paths: the update is skipped, the
parameters stay finite and exactly as before, the error names the step, and the checkpoint
written before the NaN is left byte for byte as it was."""

from __future__ import annotations

import logging
import math
import re

import pyro
import pytest
import torch

from pyro_gen.infer import fit
from pyro_gen.infer.checkpoint import CHECKPOINT_NAME
from pyro_gen.infer.fit import NonFiniteLossError
from tests.infer.test_compiled_guard import Poisonable

BATCH, EXAMPLES = 8, 64  # 8 steps an epoch
POISONED = 11  # steps done when the infinity arrives (counted from 0)
NAMED = POISONED + 1  # the step that sees it, as fit names steps: from 1, as metrics.jsonl


def poison_at(step: int, watched: dict):
    """A step callback that, once ``step`` steps are done, remembers the parameters (and the
    checkpoint's bytes) and then poisons every later step."""

    def callback(done: int, gen: Poisonable) -> None:
        if done == step:
            watched["params"] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
            path = watched.get("checkpoint")
            watched["bytes"] = path.read_bytes() if path is not None and path.exists() else None
            gen.poison.fill_(math.inf)

    return callback


def train(gen, compile, **kw):
    return fit(
        gen,
        torch.randn(EXAMPLES, 2) + 1.0,
        batch_size=BATCH,
        optim=pyro.optim.Adam({"lr": 0.05}),
        compile=compile,
        progress=False,
        **kw,
    )


@pytest.mark.parametrize("poison", ["loss", "grad"])
@pytest.mark.parametrize("compile", [None, False], ids=["compiled", "plain"])
def test_a_nan_step_is_skipped_and_named(poison, compile, caplog):
    gen, watched = Poisonable(poison), {}
    with (
        caplog.at_level(logging.WARNING, logger="pyro_gen"),
        pytest.raises(NonFiniteLossError, match=rf"\bstep {NAMED}\b.*skipped") as info,
    ):
        train(gen, compile, epochs=3, step_callbacks=[poison_at(POISONED, watched)])
    assert "finite" in str(info.value)
    assert not [r for r in caplog.records if "step off" in r.getMessage()]  # stayed compiled
    params = dict(pyro.get_param_store().items())
    assert params.keys() == watched["params"].keys()
    for name, value in params.items():
        assert torch.isfinite(value).all(), name
        assert torch.equal(value, watched["params"][name]), name


@pytest.mark.parametrize("checkpoint_every", [None, 2])
@pytest.mark.parametrize("compile", [None, False], ids=["compiled", "plain"])
def test_the_checkpoint_before_a_nan_is_untouched(tmp_path, checkpoint_every, compile):
    path = tmp_path / CHECKPOINT_NAME
    gen, watched = Poisonable("grad"), {"checkpoint": path}
    train(gen, compile, epochs=1, checkpoint_dir=tmp_path, checkpoint_every=checkpoint_every)
    assert path.exists()
    with pytest.raises(NonFiniteLossError, match=re.escape(f"step {NAMED}")):
        train(
            gen,
            compile,
            epochs=2,
            checkpoint_dir=tmp_path,
            checkpoint_every=checkpoint_every,
            step_callbacks=[poison_at(POISONED, watched)],
        )
    assert watched["bytes"] is not None and path.read_bytes() == watched["bytes"]
