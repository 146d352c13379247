"""NaN or infinity injected by a user's own model (``pyro.param`` sites with ``positive`` and
``simplex`` constraints, outside any module) at a chosen step, on fit's compiled and plain
paths, with optimizers other than Adam: every update from that step on is skipped, so the
params and the optimizer state stay finite and exactly as they were, the error names the
step, and the checkpoint written before it keeps its bytes.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.distributions import constraints

from pyro_gen.infer import changes_only_tensors, fit
from pyro_gen.infer.fit import NonFiniteLossError
from tests.reliability.identical_state import assert_identical

# the data plates here have the batch's size (the posterior is not the point)
pytestmark = pytest.mark.filterwarnings("ignore::pyro_gen.infer.batch_checks.UnscaledBatchWarning")

X = torch.randn(32, 3) + 1.0  # 8 batches of 4 an epoch
POISONED = 5  # steps done when the infinity arrives
NAMED = POISONED + 1  # the step that sees it, counted from 1 as fit names steps


def program(kind: str) -> tuple[torch.Tensor, Any, Any]:
    """A model whose loss (``kind="loss"``) or only gradient (``"grad"``) is non-finite
    while ``poison`` holds an infinity: ``where(isfinite(b), b, 0)`` is 0 going forward,
    but its backward multiplies a zero by an infinite derivative."""
    poison = torch.zeros(())

    def model(x: torch.Tensor) -> None:
        weights = pyro.param("weights", torch.ones(3) / 3, constraint=constraints.simplex)
        scale = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
        loc = pyro.sample("loc", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        blown = (weights.sum() + scale.sum()) * poison
        if kind == "loss":
            pyro.factor("poison", -poison)
        else:
            pyro.factor("poison", torch.where(torch.isfinite(blown), blown, torch.zeros(())))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc * weights * 3, scale).to_event(1), obs=x)

    def guide(x: torch.Tensor) -> None:
        mean = pyro.param("q_mean", torch.zeros(3))
        std = pyro.param("q_std", torch.ones(3), constraint=constraints.positive)
        pyro.sample("loc", dist.Normal(mean, std).to_event(1))

    return poison, model, guide


OPTIMIZERS = {
    "clipped_adam": lambda: pyro.optim.ClippedAdam({"lr": 0.05}),
    "sgd_momentum": lambda: pyro.optim.SGD({"lr": 0.01, "momentum": 0.9}),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["loss", "grad"])
@pytest.mark.parametrize("compile", [None, False], ids=["compiled", "plain"])
def test_a_user_models_nan_is_skipped_named_and_leaves_the_checkpoint(
    tmp_path, optimizer, kind, compile
):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    poison, model, guide = program(kind)
    optim = OPTIMIZERS[optimizer]()
    path, seen = tmp_path / "checkpoint.pt", {}

    def poison_after(step: int, m: Any) -> None:
        if step == POISONED:
            seen["params"] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
            seen["optim"] = copy.deepcopy(optim.get_state())
            seen["bytes"] = path.read_bytes()  # the step-4 checkpoint
            poison.fill_(math.inf)

    with pytest.raises(NonFiniteLossError, match=rf"\bstep {NAMED}\b.*skipped") as info:
        fit(model, X, guide=guide, batch_size=4, epochs=2, optim=optim, progress=False,
            compile=compile, checkpoint_dir=tmp_path, checkpoint_every=2,
            step_callbacks=[changes_only_tensors(poison_after)])  # fmt: skip
    assert "parameters are finite" in str(info.value)
    assert not re.search(rf"\bstep {POISONED}\b", str(info.value))
    # equal to the finite values before the poisoned step: finite
    assert_identical(seen["params"], {k: v.detach() for k, v in pyro.get_param_store().items()})
    assert_identical(seen["optim"], optim.get_state(), "optim")
    assert path.read_bytes() == seen["bytes"]
