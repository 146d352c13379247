"""``fit`` and the evaluation helpers on a Pyro user's own data pipelines where the data
limit what can be done, or need more than the batches themselves.

What each check is against:

- a loader drawing its order from a ``torch.Generator`` of its own (wherever it sits:
  ``generator=``, a sampler's, the sampler inside a ``BatchSampler`` given as ``sampler=``):
  a run resumed inside its third epoch equals Pyro's loop over the uninterrupted run's
  batches, with no warning (the checkpoint holds the generator's state);
- ``num_workers=2`` with ``persistent_workers``, ``worker_init_fn`` and a seeded
  ``generator=``: Pyro's SVI loop bit for bit, no worker left behind;
- a one-shot generator: one pass as Pyro's loop takes it, a second refused with one error,
  and a stream resumed inside its pass equal to the uninterrupted run;
- a ``SubsetRandomSampler`` split: the split's size is the number of examples the batches
  are drawn from (the whole dataset's was named, with a warning where there was nothing to
  warn of and the wrong size to give the plate);
- ``collate_fn`` returning a ``PackedSequence``: Pyro's loop bit for bit, and the
  evaluation helpers over it equal to the same batches in a list;
- ``transform=`` applied to a chosen argument of dict and tuple batches, as Pyro's loop on
  the transformed batches; data of another dtype than the networks: one clear error in
  ``fit``, ``evaluate_elbo`` and ``iwae_log_likelihood``.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import warnings
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from pyro_gen.infer.batch_checks import UnscaledBatchWarning
from pyro_gen.infer.tensor_mismatch import BatchMismatchError
from tests.infer.test_fit_user_data_pipelines import LR, B, N, X, _equal, _fit, _params, _svi

D = X.shape[1]


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(3)


SEEDED = {
    "generator=": lambda: DataLoader(TensorDataset(X), B, shuffle=True, generator=_generator()),
    "weighted sampler": lambda: DataLoader(
        TensorDataset(X), B, sampler=WeightedRandomSampler(torch.ones(N), N, generator=_generator())
    ),
    "subset sampler": lambda: DataLoader(
        TensorDataset(X), 4, sampler=SubsetRandomSampler(range(12), generator=_generator())
    ),
    "batch_sampler": lambda: DataLoader(
        TensorDataset(X),
        batch_sampler=BatchSampler(RandomSampler(range(N), generator=_generator()), B, False),
    ),
    "BatchSampler as sampler": lambda: DataLoader(
        TensorDataset(X),
        batch_size=None,
        sampler=BatchSampler(RandomSampler(range(N), generator=_generator()), B, False),
    ),
}


@pytest.mark.parametrize("kind", SEEDED)
def test_a_loader_with_a_generator_of_its_own_resumes_exactly(kind: str) -> None:
    # its own loop, the generator carried across passes; stopped inside epoch 3 (3 batches
    # an epoch): the checkpoint holds the loader's generator state beside the global RNG's
    expected = _svi(SEEDED[kind](), 7)
    with tempfile.TemporaryDirectory() as run, warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn of, fresh or resumed
        assert _equal(expected, _fit(SEEDED[kind](), steps=7, checkpoint_dir=run)[0])
        resumed, _ = _fit(SEEDED[kind](), steps=9, checkpoint_dir=run)
    assert _equal(_svi(SEEDED[kind](), 9), resumed)


def _seed_numpy(worker: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)


def test_workers_with_persistent_workers_init_fn_and_a_seeded_generator() -> None:
    def loader() -> DataLoader:
        return DataLoader(
            TensorDataset(X),
            B,
            shuffle=True,
            num_workers=2,
            persistent_workers=True,
            worker_init_fn=_seed_numpy,
            generator=_generator(),
        )

    expected = _svi(loader(), 6)
    got, result = _fit(loader(), epochs=2)
    assert _equal(expected, got) and [r["step"] for r in result.history] == [3, 6]
    assert not multiprocessing.active_children()


def _stream():
    """A one-shot stream drawing each batch from the global RNG as it is read."""
    while True:
        yield X[torch.randint(N, (B,))]


def test_a_one_shot_generator_takes_one_pass_and_resumes_inside_it() -> None:
    def batches():
        yield from (X[i : i + B] for i in range(0, N, B))

    assert _equal(_svi(list(batches()), 3), _fit(batches(), epochs=1)[0])
    with pytest.raises(ValueError, match="used up after one pass") as raised:
        _fit(batches(), epochs=2)
    assert len(str(raised.value).splitlines()) == 1
    # an endless stream with steps=: stopped and resumed inside its one pass, exactly
    expected = _svi(_stream(), 7)
    with tempfile.TemporaryDirectory() as run, warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(_stream(), steps=4, checkpoint_dir=run, checkpoint_every=2)
        resumed, _ = _fit(_stream(), seed=5, steps=7, checkpoint_dir=run)
    assert _equal(expected, resumed)


def global_model(x: torch.Tensor) -> None:
    m = pyro.sample("m", dist.Normal(0.0, 10.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(m, 1.0).expand([x.shape[0], D]).to_event(1), obs=x)


def global_guide(x: torch.Tensor) -> None:
    pyro.sample("m", dist.Normal(pyro.param("m_loc", torch.tensor(0.0)), 1.0))


def test_a_subset_split_counts_its_own_examples() -> None:
    def split(batch_size: int) -> DataLoader:
        return DataLoader(TensorDataset(X), batch_size, sampler=SubsetRandomSampler(range(12)))

    options = {"guide": global_guide, "epochs": 1, "compile": False, "progress": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one batch holds the whole training split
        fit(global_model, split(12), **options)
    with pytest.warns(UnscaledBatchWarning, match=r"from 12 examples.*pyro.plate\('data', 12,"):
        fit(global_model, split(4), **options)


def _pack(items: list[torch.Tensor]) -> nn.utils.rnn.PackedSequence:
    return pack_sequence(sorted(items, key=len, reverse=True))


SEQUENCES = [torch.randn(n, D, generator=torch.Generator().manual_seed(n)) for n in range(1, 13)]


def sequence_model(packed: nn.utils.rnn.PackedSequence) -> None:
    padded, lengths = pad_packed_sequence(packed, batch_first=True)
    mu = pyro.param("mu", torch.zeros(D))
    mask = torch.arange(padded.shape[1]) < lengths[:, None]
    with pyro.plate("data", padded.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
        # broadcast over particles, so that evaluation vectorizes them
        shape = z.shape[:-1] + padded.shape[1:]
        likelihood = dist.Normal(z.unsqueeze(-2), 1.0).expand(shape).to_event(1)
        pyro.sample("x", likelihood.mask(mask).to_event(1), obs=padded)


def sequence_guide(packed: nn.utils.rnn.PackedSequence) -> None:
    loc = pyro.param("loc", torch.zeros(D))
    with pyro.plate("data", int(packed.batch_sizes[0])):
        pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))


def test_packed_sequences_from_a_collate_fn() -> None:
    def loader(shuffle: bool = True) -> DataLoader:
        return DataLoader(SEQUENCES, 4, shuffle=shuffle, collate_fn=_pack)

    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    svi = SVI(sequence_model, sequence_guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    batches = loader()
    for _ in range(2):
        for packed in batches:
            svi.step(packed)
    expected = _params()
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    options = {"optim": pyro.optim.Adam({"lr": LR}), "compile": False, "progress": False}
    fit(sequence_model, loader(), guide=sequence_guide, epochs=2, **options)
    assert _equal(expected, _params())
    for estimate in (evaluate_elbo, iwae_log_likelihood):
        pyro.set_rng_seed(1)
        over_loader = estimate(sequence_model, loader(shuffle=False), guide=sequence_guide)
        pyro.set_rng_seed(1)
        over_list = estimate(sequence_model, list(loader(shuffle=False)), guide=sequence_guide)
        assert over_loader == over_list


class Labelled(Dataset):
    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return X[i], X[i].sum()


def labelled_model(x: torch.Tensor, y: torch.Tensor) -> None:
    w = pyro.param("w", torch.zeros(D))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)


def labelled_guide(x: torch.Tensor, y: torch.Tensor) -> None:
    pass


def _double(t: torch.Tensor) -> torch.Tensor:
    return 2.0 * t


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_transform_applies_to_the_chosen_argument(form: str) -> None:
    collate = None if form == "tuple" else lambda b: dict(zip("xy", map(torch.stack, zip(*b))))
    chosen: Any = 1 if form == "tuple" else "y"

    def loader() -> DataLoader:
        return DataLoader(Labelled(), B, shuffle=True, collate_fn=collate)

    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    svi = SVI(labelled_model, labelled_guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    for x, y in loader() if form == "tuple" else (b.values() for b in loader()):
        svi.step(x, _double(y))
    expected = _params()
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    options = {"optim": pyro.optim.Adam({"lr": LR}), "compile": False, "progress": False}
    options["epochs"] = 1
    fit(labelled_model, loader(), guide=labelled_guide, transform={chosen: _double}, **options)
    assert _equal(expected, _params())
    with pytest.raises(ValueError, match="names argument 'z', which the batch does not have"):
        fit(labelled_model, loader(), guide=labelled_guide, transform={"z": _double}, **options)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(D, D)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("net", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(self.linear(x), 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pass


@pytest.mark.parametrize("run", ["fit", "evaluate_elbo", "iwae_log_likelihood"])
def test_batches_of_another_dtype_than_the_networks_get_one_clear_error(run: str) -> None:
    loader = DataLoader(TensorDataset(X.double()), B)  # numpy data arrive as float64
    calls = {
        "fit": lambda: fit(Net(), loader, epochs=1, progress=False),
        "evaluate_elbo": lambda: evaluate_elbo(Net(), loader),
        "iwae_log_likelihood": lambda: iwae_log_likelihood(Net(), loader, num_samples=2),
    }
    with pytest.raises(BatchMismatchError, match="float64, Linear holds float32") as raised:
        calls[run]()
    assert len(str(raised.value).splitlines()) == 1
