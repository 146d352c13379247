"""A run stopped inside an epoch and resumed equals the uninterrupted run bit for bit when
the user's ``DataLoader`` draws its order from a generator of its own: the loader's
``generator=`` (``shuffle=True``), a ``RandomSampler(generator=)`` inside a ``BatchSampler``,
a ``WeightedRandomSampler(generator=)``.

What each check is against: the uninterrupted run's params (``torch.equal``), stopped inside
epochs 1, 2 and 3 (3 batches an epoch) and at an epoch's end, under ``compile=False`` and the
default compiled step, the resumed script seeded differently (the checkpoint restores the
global RNG; the loader's generator is seeded anew, as a restarted script seeds it). Before
checkpoints kept the generators' states these resumes warned and differed, except inside
epoch 2 by chance (fit's first read of the data advanced the generator by one pass).
A checkpoint without the states (as older pyro-gen wrote) still resumes, with the warning;
a batch function whose loaders share one generator warns; one whose loaders seed their own
resumes exactly.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from pyro_gen.infer import fit
from pyro_gen.infer.checkpoint import CheckpointError, write_payload
from pyro_gen.infer.checkpoint_format import MAGIC
from pyro_gen.infer.fit_progress import _Progress

X_DIM, Z_DIM, N, B = 3, 2, 12, 4  # 3 batches an epoch
X = torch.randn(N, X_DIM, generator=torch.Generator().manual_seed(1))
DATA = TensorDataset(X)
TOTAL = 10  # steps: into epoch 4


class _VAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)  # the same networks in every run compared
        self.decoder = nn.Linear(Z_DIM, X_DIM)
        self.encoder = nn.Linear(X_DIM, 2 * Z_DIM)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", N, subsample_size=x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([Z_DIM]).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        h = self.encoder(x)
        with pyro.plate("data", N, subsample_size=x.shape[0]):
            scale = nn.functional.softplus(h[:, Z_DIM:]) + 1e-3
            pyro.sample("z", dist.Normal(h[:, :Z_DIM], scale).to_event(1))


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(3)


LOADERS: dict[str, Callable[[], DataLoader]] = {
    "shuffle": lambda: DataLoader(DATA, B, shuffle=True, generator=_seeded()),
    "batch_sampler": lambda: DataLoader(
        DATA,
        batch_size=None,
        sampler=BatchSampler(RandomSampler(DATA, generator=_seeded()), B, drop_last=False),
    ),
    "weighted": lambda: DataLoader(
        DATA, B, sampler=WeightedRandomSampler(torch.linspace(0.2, 2.0, N), N, generator=_seeded())
    ),
}


def _run(data: object, directory: str | None, steps: int, seed: int, compile: bool | None):
    """A script's run as the user restarts it: seeded, model and loader built anew."""
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    fit(
        _VAE(),
        data,
        steps=steps,
        optim=pyro.optim.Adam({"lr": 0.05}),
        compile=compile,
        progress=False,
        checkpoint_dir=directory,
        checkpoint_every=1 if directory is not None else None,
    )
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("compile", [False, None], ids=["eager", "compiled"])
@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_resume_inside_each_epoch_is_exact(kind: str, compile: bool | None) -> None:
    loader = LOADERS[kind]
    expected = _run(loader(), None, TOTAL, 0, compile)
    # inside epochs 1, 2 and 3, and at the end of epoch 2 (fewer runs of the slower compile)
    for stop in (2, 4, 6, 8) if compile is False else (2, 5, 8):
        with tempfile.TemporaryDirectory() as run, warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing the checkpoint leaves out: no warning
            _run(loader(), run, stop, 0, compile)
            resumed = _run(loader(), run, TOTAL, 123, compile)  # another global seed
        assert _equal(expected, resumed), f"stopped after step {stop}"


def test_the_order_matters_to_the_comparison() -> None:
    # the comparison above can fail: another order of the same batches trains otherwise
    other = DataLoader(DATA, B, shuffle=True, generator=torch.Generator().manual_seed(4))
    assert not _equal(_run(LOADERS["shuffle"](), None, 5, 0, False), _run(other, None, 5, 0, False))


def test_a_checkpoint_without_the_states_resumes_with_the_warning(monkeypatch) -> None:
    # as pyro-gen wrote them before: the progress holds no loader_generator_states
    def old_state(self: _Progress) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "loader_generator_states"}

    with tempfile.TemporaryDirectory() as run:
        with monkeypatch.context() as patched:
            patched.setattr(_Progress, "state", old_state)
            _run(LOADERS["shuffle"](), run, 7, 0, False)
        with pytest.warns(UserWarning, match="its generator= argument.*does not hold its state"):
            resumed = _run(LOADERS["shuffle"](), run, TOTAL, 0, False)
    # what the warning says: inside epoch 3 the order is not the uninterrupted run's
    assert not _equal(_run(LOADERS["shuffle"](), None, TOTAL, 0, False), resumed)


def test_a_batch_function_whose_loaders_share_a_generator_warns() -> None:
    shared = _seeded()

    def batches() -> DataLoader:
        return DataLoader(DATA, B, shuffle=True, generator=shared)

    with tempfile.TemporaryDirectory() as run:
        _run(batches, run, 4, 0, False)
        with pytest.warns(UserWarning, match="returns loaders that share its generator="):
            _run(batches, run, TOTAL, 0, False)


def test_a_batch_function_whose_loaders_seed_their_own_resumes_exactly() -> None:
    expected = _run(LOADERS["shuffle"], None, TOTAL, 0, False)
    with tempfile.TemporaryDirectory() as run, warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(LOADERS["shuffle"], run, 4, 0, False)
        assert _equal(expected, _run(LOADERS["shuffle"], run, TOTAL, 5, False))


def test_a_loader_with_another_number_of_generators_warns() -> None:
    # the checkpoint's loader had one generator of its own; the resumed one has two
    def two() -> DataLoader:
        sampler = RandomSampler(DATA, generator=_seeded())
        return DataLoader(DATA, B, sampler=sampler, generator=_seeded())

    with tempfile.TemporaryDirectory() as run:
        _run(LOADERS["shuffle"](), run, 4, 0, False)
        with pytest.warns(UserWarning, match="recorded 1 generator state.*has 2 generator"):
            _run(two(), run, TOTAL, 0, False)


def test_a_crafted_generator_state_is_refused_before_training() -> None:
    with tempfile.TemporaryDirectory() as run:
        _run(LOADERS["shuffle"](), run, 4, 0, False)
        path = Path(run) / "checkpoint.pt"
        raw = path.read_bytes()
        payload = torch.load(io.BytesIO(raw[raw.index(b"\n", len(MAGIC)) + 1 :]), weights_only=True)
        payload["progress"]["loader_generator_states"] = ["not a state"]
        write_payload(path, payload)  # a valid checksum over the crafted payload
        with pytest.raises(CheckpointError, match="generator states are not uint8 tensors"):
            _run(LOADERS["shuffle"](), run, TOTAL, 0, False)
