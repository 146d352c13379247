"""A user's own Pyro program trained by ``fit`` with a checkpoint directory, interrupted
mid-epoch (an exception from a step callback, or from the user's own batch iterator) and
resumed, equals a run never interrupted bit for bit: the param store (``pyro.param`` sites
with ``positive`` and ``simplex`` constraints, outside any module), the optimizer state of
Pyro optimizers other than Adam (ClippedAdam, SGD with momentum, a ``PyroLRScheduler``),
modules and autoguides, and the torch, Python and numpy random states afterwards.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoNormal
from pyro.nn import PyroModule, PyroParam, PyroSample

from pyro_gen.infer import changes_only_tensors, fit
from tests.reliability.identical_state import assert_identical

# the data plates here have the batch's size (the posterior is not the point)
pytestmark = pytest.mark.filterwarnings("ignore::pyro_gen.infer.batch_checks.UnscaledBatchWarning")

torch.manual_seed(0)
X = torch.randn(24, 3) + 1.0  # 6 batches of 4 an epoch
Y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(24)


class Interrupted(Exception):
    """Stands in for a crash at a chosen point of training."""


def model(x: torch.Tensor) -> None:
    scale = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
    weights = pyro.param("weights", torch.ones(3) / 3, constraint=constraints.simplex)
    loc = pyro.sample("loc", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc * weights * 3, scale).to_event(1), obs=x)


def guide(x: torch.Tensor) -> None:
    mean = pyro.param("q_mean", torch.zeros(3))
    std = pyro.param("q_std", torch.ones(3), constraint=constraints.positive)
    pyro.sample("loc", dist.Normal(mean, std).to_event(1))


OPTIMIZERS: dict[str, Callable[[], pyro.optim.PyroOptim]] = {
    "clipped_adam": lambda: pyro.optim.ClippedAdam({"lr": 0.05, "clip_norm": 1.0, "lrd": 0.99}),
    "sgd_momentum": lambda: pyro.optim.SGD({"lr": 0.01, "momentum": 0.9}),
    "step_lr": lambda: pyro.optim.StepLR(
        {
            "optimizer": torch.optim.SGD,
            "optim_args": {"lr": 0.01, "momentum": 0.9},
            "step_size": 2,
            "gamma": 0.5,
        }
    ),
}


def state(optim: pyro.optim.PyroOptim, *modules: torch.nn.Module) -> dict[str, Any]:
    """Everything a resumed run must reproduce, and the random states after it."""
    return {
        "params": {k: v.detach().clone() for k, v in pyro.get_param_store().items()},
        "optim": copy.deepcopy(optim.get_state()),
        "modules": [copy.deepcopy(m.state_dict()) for m in modules],
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state()[1].copy(),
    }


def train_plain(
    run: Path,
    optimizer: str,
    *,
    seed: int = 0,
    stop_at: int | None = None,
    how: str = "callback",
    compile: bool | None = False,
    **kwargs: Any,
) -> dict[str, Any] | None:
    """A plain-function model and hand-written guide; ``stop_at`` raises once that many
    steps are done, from a step callback or from the user's batch iterator."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    optim = OPTIMIZERS[optimizer]()
    step_callbacks: list[Any] = []
    if isinstance(optim, pyro.optim.PyroLRScheduler):  # as fit's docs step one per step
        step_callbacks.append(changes_only_tensors(lambda step, m: optim.step()))
    data: Any = X
    if how == "callback" and stop_at is not None:

        def crash(step: int, m: Any) -> None:
            if step == stop_at:
                raise Interrupted

        step_callbacks.append(crash)
    elif how == "iterator":
        served = [0]

        def batches() -> Iterator[torch.Tensor]:  # the user's own loop over their data
            order = torch.randperm(len(X))  # drawn from the global RNG, as a loader's
            for i in range(0, len(X), 4):
                if stop_at is not None and served[0] == stop_at:
                    raise Interrupted
                served[0] += 1
                yield X[order[i : i + 4]]

        data = batches
    try:
        fit(model, data, guide=guide, batch_size=4, optim=optim, progress=False,
            compile=compile, checkpoint_dir=run, step_callbacks=step_callbacks,
            **kwargs)  # fmt: skip
    except Interrupted:
        return None
    return state(optim)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("how", ["callback", "iterator"])
def test_a_plain_function_program_resumes_bit_for_bit(tmp_path, optimizer, how):
    # steps= stops inside epoch 3, the crash lands inside epoch 2, between checkpoints
    run = {"steps": 16, "checkpoint_every": 3}
    straight = train_plain(tmp_path / "a", optimizer, how=how, **run)
    assert train_plain(tmp_path / "b", optimizer, how=how, stop_at=8, **run) is None
    assert (tmp_path / "b" / "checkpoint.pt").exists()
    resumed = train_plain(tmp_path / "b", optimizer, how=how, seed=5, **run)
    assert_identical(straight, resumed)


@pytest.mark.parametrize("compile", [None, False], ids=["compiled", "plain"])
def test_steps_then_more_steps_equals_one_run_for_a_plain_function(tmp_path, compile):
    straight = train_plain(tmp_path / "a", "sgd_momentum", steps=15, compile=compile)
    train_plain(tmp_path / "b", "sgd_momentum", steps=4, compile=compile)
    train_plain(tmp_path / "b", "sgd_momentum", seed=1, steps=9, compile=compile)
    resumed = train_plain(tmp_path / "b", "sgd_momentum", seed=2, steps=15, compile=compile)
    assert_identical(straight, resumed)


class Regression(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](3, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
        self.sigma = PyroParam(torch.tensor(1.0), constraint=constraints.positive)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, self.sigma), obs=y)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def program(kind: str) -> tuple[torch.nn.Module, Any, Any]:
    """(what holds the weights, model, guide) for each way users write a program."""
    if kind == "pyro_module":
        net = Net()

        def nn_model(x: torch.Tensor, y: torch.Tensor) -> None:
            pyro.module("net", net)
            noise = pyro.param("noise", torch.tensor(1.0), constraint=constraints.positive)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Normal(net.f(x).squeeze(-1), noise), obs=y)

        return net, nn_model, lambda x, y: None
    reg = Regression()
    if kind == "auto_normal":
        return reg, reg, AutoNormal(reg)
    if kind == "auto_delta":
        return reg, reg, AutoDelta(reg)
    guides = AutoGuideList(reg)
    guides.append(AutoNormal(pyro.poutine.block(reg, expose=["linear.weight"])))
    guides.append(AutoDelta(pyro.poutine.block(reg, expose=["linear.bias"])))
    return reg, reg, guides


def train_module(
    run: Path, kind: str, *, seed: int = 0, stop_at: int | None = None, **kwargs: Any
) -> dict[str, Any] | None:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    weights, user_model, user_guide = program(kind)
    optim = pyro.optim.ClippedAdam({"lr": 0.05})
    # the user's DataLoader, shuffling from the global RNG
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, Y), batch_size=4, shuffle=True
    )

    def crash(step: int, m: Any) -> None:
        if step == stop_at:
            raise Interrupted

    try:
        fit(user_model, loader, guide=user_guide, optim=optim, progress=False, compile=False,
            checkpoint_dir=run, step_callbacks=[crash], **kwargs)  # fmt: skip
    except Interrupted:
        return None
    guides = [user_guide] if isinstance(user_guide, torch.nn.Module) else []
    return state(optim, weights, *guides)


@pytest.mark.parametrize("kind", ["auto_normal", "auto_delta", "auto_guide_list", "pyro_module"])
def test_modules_and_autoguides_with_a_dataloader_resume_bit_for_bit(tmp_path, kind):
    run = {"epochs": 3, "checkpoint_every": 4}
    straight = train_module(tmp_path / "a", kind, **run)
    assert train_module(tmp_path / "b", kind, stop_at=10, **run) is None
    resumed = train_module(tmp_path / "b", kind, seed=3, **run)
    assert_identical(straight, resumed)
