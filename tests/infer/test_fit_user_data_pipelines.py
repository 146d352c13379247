"""``fit`` on a Pyro user's own data pipelines, as a new user brings them: ``DataLoader`` s
over their ``Dataset`` (tuples, dicts holding non-tensor entries, a single tensor), with
``drop_last``, a ``sampler=`` (weighted, a subset split), a ``BatchSampler`` (as
``batch_sampler=``, or as ``sampler=`` with ``batch_size=None``), ``pin_memory`` on CPU, an
``IterableDataset`` without a length, a function returning a generator, a list of batches.

What each check is against: Pyro's own ``SVI`` loop over the same batches from the same
seed (``fit(compile=False)`` takes its steps bit for bit); the steps and epochs ``fit``
documents (``steps=7`` over 3 batches an epoch ends inside epoch 3); and a run stopped
inside an epoch and resumed, in a process whose global RNG is elsewhere (the user's
restarted script need not seed it), equal to the uninterrupted run bit for bit and silent,
since every one of these draws its order from the global RNG that checkpoints record.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from pyro_gen.infer import fit

N, B, LR = 24, 8, 0.05
X = torch.randn(N, 3, generator=torch.Generator().manual_seed(1))


def model(x: torch.Tensor, idx: Any = None, name: Any = None) -> None:
    mu = pyro.param("mu", torch.zeros(3))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def guide(x: torch.Tensor, idx: Any = None, name: Any = None) -> None:
    loc = pyro.param("loc", torch.zeros(3))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc + 0.5 * x, 1.0).to_event(1))


class Rows(Dataset):
    """A map-style dataset of one tensor, an ``(x, index)`` tuple or a dict with a string."""

    def __init__(self, form: str) -> None:
        self.form = form

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> Any:
        if self.form == "tuple":
            return X[i], i
        if self.form == "dict":  # collated into a tensor of indices and a list of names
            return {"x": X[i], "idx": i, "name": f"row {i}"}
        return X[i]


class Stream(IterableDataset):
    """Batches of 4 rows with noise drawn as they are read (no length)."""

    def __iter__(self):
        for i in range(0, N, 4):
            yield X[i : i + 4] + 0.1 * torch.randn(4, 3)


def shuffled_batches():
    order = torch.randperm(N)
    for i in range(0, N, B):
        yield X[order[i : i + B]]


def _weights() -> torch.Tensor:
    return torch.rand(N, generator=torch.Generator().manual_seed(3))


LOADERS: dict[str, Callable[[], Any]] = {
    "tuples": lambda: DataLoader(Rows("tuple"), B, shuffle=True),
    "dicts_with_strings": lambda: DataLoader(Rows("dict"), B, shuffle=True),
    "one_tensor": lambda: DataLoader(Rows("tensor"), B, shuffle=True),
    "drop_last": lambda: DataLoader(Rows("tensor"), 7, shuffle=True, drop_last=True),
    "weighted_sampler": lambda: DataLoader(
        Rows("tensor"), B, sampler=WeightedRandomSampler(_weights(), N)
    ),
    "subset_sampler": lambda: DataLoader(
        Rows("tensor"), 4, sampler=SubsetRandomSampler(range(0, N, 2))
    ),
    "batch_sampler": lambda: DataLoader(
        Rows("tuple"), batch_sampler=BatchSampler(RandomSampler(range(N)), B, drop_last=False)
    ),
    "batch_sampler_as_sampler": lambda: DataLoader(
        TensorDataset(X),
        batch_size=None,
        sampler=BatchSampler(RandomSampler(range(N)), B, drop_last=False),
    ),
    "pin_memory": lambda: DataLoader(Rows("tensor"), B, shuffle=True, pin_memory=True),
    "iterable_dataset": lambda: DataLoader(Stream(), batch_size=None),
    "generator_function": lambda: shuffled_batches,
    "list": lambda: [X[i : i + B] for i in range(0, N, B)],
}
BATCHES_AN_EPOCH = {"iterable_dataset": 6, "drop_last": 3}


def _as_call(batch: Any) -> tuple[tuple, dict]:
    if isinstance(batch, dict):
        return (), batch
    if isinstance(batch, list | tuple):
        return tuple(batch), {}
    return (batch,), {}


def _params() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _svi(data: Any, steps: int) -> dict[str, torch.Tensor]:
    """The user's own loop: SVI over the batches, pass after pass, until ``steps``."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    taken = 0
    while taken < steps:
        for batch in data() if callable(data) else data:
            args, kwargs = _as_call(batch)
            svi.step(*args, **kwargs)
            taken += 1
            if taken == steps:
                break
    return _params()


def _fit(data: Any, seed: int = 0, **kwargs: Any) -> tuple[dict[str, torch.Tensor], Any]:
    pyro.set_rng_seed(seed)
    if seed == 0:  # a restarted script (another seed) keeps the store as it comes
        pyro.clear_param_store()
    result = fit(
        model,
        data,
        guide=guide,
        optim=pyro.optim.Adam({"lr": LR}),
        compile=False,
        progress=False,
        **kwargs,
    )
    return _params(), result


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


quiet_pin_memory = pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")


@quiet_pin_memory
@pytest.mark.parametrize("kind", LOADERS)
def test_fit_takes_pyro_svi_steps_and_counts_them_as_documented(kind: str) -> None:
    expected = _svi(LOADERS[kind](), 7)
    got, result = _fit(LOADERS[kind](), steps=7)
    assert _equal(expected, got)
    per_epoch = BATCHES_AN_EPOCH.get(kind, 3)
    # full epochs recorded with their step counts, then the partial one steps=7 ends in
    full, rest = divmod(7, per_epoch)
    assert [r["step"] for r in result.history] == [per_epoch * (e + 1) for e in range(full)] + [7]
    assert result.history[-1].get("partial") is True and result.history[-1]["batches"] == rest
    assert (result.epoch, result.step) == (full, 7)
    _, by_epochs = _fit(LOADERS[kind](), epochs=2)
    assert [r["step"] for r in by_epochs.history] == [per_epoch, 2 * per_epoch]


@quiet_pin_memory
@pytest.mark.parametrize("kind", LOADERS)
def test_a_run_resumed_inside_an_epoch_equals_the_uninterrupted_one(kind: str) -> None:
    with tempfile.TemporaryDirectory() as straight:
        expected, _ = _fit(LOADERS[kind](), steps=7, checkpoint_dir=straight)
    with tempfile.TemporaryDirectory() as run, warnings.catch_warnings():
        warnings.filterwarnings("error")  # nothing is left out of the checkpoint
        warnings.filterwarnings("ignore", ".*pin_memory.*", UserWarning)
        _fit(LOADERS[kind](), steps=4, checkpoint_dir=run, checkpoint_every=2)
        resumed, result = _fit(LOADERS[kind](), seed=123, steps=7, checkpoint_dir=run)
    assert _equal(expected, resumed)
    assert result.step == 7
