"""Shared checks for a user's network written as a :class:`~pyro.nn.PyroModule` inside a
pyro_gen family: the param store holds each tensor once, training equals the plain
``nn.Module`` version's, and a resumed ``fit`` equals an uninterrupted one."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.nn.module import to_pyro_module_

from pyro_gen.infer import fit


def as_pyro_module(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net`` made a PyroModule in place, as Pyro's modules tutorial does."""
    copied = copy.deepcopy(net)
    to_pyro_module_(copied)
    return copied


def assert_each_tensor_once() -> None:
    """No tensor of the param store is stored under two names."""
    store = pyro.get_param_store()
    tensors = [store._params[name] for name in store]
    assert len({id(p) for p in tensors}) == len(tensors), sorted(store.keys())


def store_values() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def svi_losses(
    model: Any, *args: Any, steps: int = 3, seed: int = 0, loss: Any = None, **kwargs: Any
) -> list:
    """Losses of Pyro's own SVI on ``model.model`` / ``model.guide`` from a fresh store
    (``loss``: Trace_ELBO unless given)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    loss = Trace_ELBO() if loss is None else loss
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": 0.05}), loss)
    return [svi.step(*args, **kwargs) for _ in range(steps)]


def fit_losses(model: Any, x: Any, steps: int = 3, seed: int = 0, **kwargs: Any) -> list:
    """``fit``'s training losses from a fresh store."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    r = fit(model, x, steps=steps, batch_size=8, progress=False,
            optim=pyro.optim.Adam({"lr": 0.05}), **kwargs)  # fmt: skip
    return [h["train_loss"] for h in r.history]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """The same tensors under the same names (a PyroModule's state_dict keeps them)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def resumed_state(
    make: Callable[[], Any],
    x: Any,
    run: Path,
    steps: list[int],
    loss: Callable[[], Any] | None = None,
) -> dict:
    """``fit`` of ``make()`` with a checkpoint directory, called once per entry of ``steps``
    (each run resumes the last), from a fresh param store and another seed each time; the
    param store, the model's (and ``loss()``'s) state and the RNG state after the last."""
    for i, n in enumerate(steps):
        pyro.clear_param_store()
        model = make()
        objective = None if loss is None else loss()
        pyro.set_rng_seed(10 + i)  # a resumed run takes its RNG state from the checkpoint
        fit(model, x, steps=n, batch_size=8, progress=False, checkpoint_dir=run, loss=objective,
            checkpoint_every=1, optim=pyro.optim.Adam({"lr": 0.05}))  # fmt: skip
        assert_each_tensor_once()
    modules = [model] if objective is None else [model, objective]
    return {
        "params": store_values(),
        "modules": [copy.deepcopy(m.state_dict()) for m in modules],
        "rng": torch.get_rng_state(),
    }
