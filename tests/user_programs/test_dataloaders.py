"""``fit`` and the evaluation helpers fed by users' own ``torch.utils.data.DataLoader`` s with
worker processes, as Pyro users write them.

What each check is against:

- training on a plain-Pyro VAE (``pyro.module`` networks, a data plate) and on a model with
  a global latent over a subsampled plate (the dataset yields indices too), through loaders
  of every common set-up (``num_workers=2`` with shuffling, ``persistent_workers``,
  ``pin_memory`` on CPU with ``drop_last``, an ``IterableDataset`` sharding itself over the
  workers, ``(x, idx)`` tuples, a ``collate_fn`` returning dicts): ``fit(compile=False)``
  takes ``pyro.infer.SVI``'s steps on the same loader and seed bit for bit, the default
  compiled step agrees to float32 rounding, ``train_loss`` is SVI's loss per example (each
  subsampled step counting for the plate's N), and no worker process outlives ``fit``.
- checkpoints: a run stopped (mid-epoch and at an epoch's end) and resumed equals the
  uninterrupted run bit for bit when the loader shuffles from the global RNG (which
  checkpoints record, as do the seeds of non-persistent workers drawing noise) and when it
  has a ``generator=`` of its own (whose state checkpoints record too: the resume warned
  and differed), with no warning; persistent workers that draw noise cannot be resumed
  exactly (their states carry over between epochs), and the resume says so in a warning
  (it differed silently), while a fresh run does not warn; persistent workers that only
  shuffle still resume bit for bit.
- bad batches: keys that change between batches and a batch of another kind (a collate_fn
  returning a numpy array) fail with one error naming the batch and what to do, in ``fit``
  and in ``evaluate_elbo`` (before: Pyro's or torch's error from inside the model), leaving
  no worker behind.
- ``evaluate_elbo`` / ``iwae_log_likelihood`` over a loader with workers: the values over
  the tensor itself, batched alike.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import warnings
from collections.abc import Callable

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood

X_DIM, Z_DIM, N, B = 4, 2, 24, 8
X = torch.randn(N, X_DIM, generator=torch.Generator().manual_seed(1))
LR = 0.02


class PlainVAE(nn.Module):
    """A plain-Pyro VAE: ``pyro.module`` networks, a data plate, no pyro_gen part."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(Z_DIM, X_DIM)
        self.encoder = nn.Linear(X_DIM, 2 * Z_DIM)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([Z_DIM]).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        h = self.encoder(x)
        scale = nn.functional.softplus(h[:, Z_DIM:]) + 1e-3
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(h[:, :Z_DIM], scale).to_event(1))


def _vae() -> PlainVAE:
    torch.manual_seed(7)  # the same networks in every run compared
    return PlainVAE()


def global_model(x: torch.Tensor, idx: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", N, subsample=idx):
        pyro.sample("obs", dist.Normal(mu, 1.0).expand([x.shape[0], X_DIM]).to_event(1), obs=x)


def global_guide(x: torch.Tensor, idx: torch.Tensor) -> None:
    loc = pyro.param("mu_loc", torch.tensor(0.0))
    scale = pyro.param("mu_scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


class Pairs(Dataset):
    """A map-style dataset of ``(x, index)`` tuples."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return X[i], i


class Stream(IterableDataset):
    """An iterable dataset that deals its rows to the workers, as torch's docs shard one."""

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        step, start = (1, 0) if info is None else (info.num_workers, info.id)
        return iter(X[start::step])


def as_dicts(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    xs, idx = zip(*items)
    return {"x": torch.stack(xs), "idx": torch.tensor(idx)}


def _workers() -> list:
    return multiprocessing.active_children()


def _params() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _svi(model, guide, loader, epochs: int) -> tuple[dict[str, torch.Tensor], list[list]]:
    """Pyro's own loop over the loader; each epoch's (loss, batch size) pairs."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    losses = []
    for _ in range(epochs):
        epoch = []
        for batch in loader:
            if isinstance(batch, dict):
                epoch.append((svi.step(**batch), batch["x"].shape[0]))
            else:
                epoch.append((svi.step(*batch), batch[0].shape[0]))
        losses.append(epoch)
    return _params(), losses


def _fit(model, loader, epochs: int, **kwargs):
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    kwargs.setdefault("compile", False)
    result = fit(model, loader, epochs=epochs, optim=pyro.optim.Adam({"lr": LR}), **kwargs)
    return _params(), result


def _assert_equal(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0.0, msg=k)


VAE_LOADERS = {
    "workers": lambda: DataLoader(TensorDataset(X), B, shuffle=True, num_workers=2),
    "persistent": lambda: DataLoader(
        TensorDataset(X), B, shuffle=True, num_workers=2, persistent_workers=True
    ),
    "pinned_drop_last": lambda: DataLoader(
        TensorDataset(X[:-3]), B, shuffle=True, num_workers=2, pin_memory=True, drop_last=True
    ),
    "iterable": lambda: DataLoader(Stream(), B // 2, num_workers=2),
}


@pytest.mark.filterwarnings("ignore:.*pin_memory:UserWarning")
@pytest.mark.parametrize("kind", VAE_LOADERS)
def test_vae_trains_as_pyro_svi_on_the_same_loader(kind: str) -> None:
    vae = _vae()
    expected, losses = _svi(vae.model, vae.guide, _Rewrap(VAE_LOADERS[kind]()), 2)
    got, result = _fit(_vae(), VAE_LOADERS[kind](), 2, progress=False)
    _assert_equal(expected, got)
    for record, epoch in zip(result.history, losses):  # a plate over the batch: per example
        assert record["train_loss"] == pytest.approx(
            sum(loss for loss, _ in epoch) / sum(b for _, b in epoch), rel=1e-12
        )
    assert not _workers()
    if kind == "workers":  # the default compiled step: the same steps to float32 rounding
        compiled, _ = _fit(_vae(), VAE_LOADERS[kind](), 2, progress=False, compile=None)
        _assert_equal(expected, compiled, atol=1e-5)
        assert not _workers()


class _Rewrap:
    """The loader's batches as SVI takes them: a lone tensor (an IterableDataset's) in a
    list, as ``svi.step(*batch)`` needs."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self):
        for batch in self.loader:
            yield batch if isinstance(batch, list) else [batch]


GLOBAL_LOADERS = {
    "tuples": lambda: DataLoader(Pairs(), B, shuffle=True, num_workers=2),
    "dicts": lambda: DataLoader(Pairs(), B, shuffle=True, num_workers=2, collate_fn=as_dicts),
}


@pytest.mark.parametrize("kind", GLOBAL_LOADERS)
def test_global_latent_over_a_subsampled_plate_trains_as_pyro_svi(kind: str) -> None:
    expected, losses = _svi(global_model, global_guide, GLOBAL_LOADERS[kind](), 2)
    # held-out batches from a loader with a generator of its own: the global RNG is then
    # the model's alone, and the recorded test ELBO is the tensors' at the same state
    held_out = DataLoader(Pairs(), B, num_workers=2, generator=torch.Generator())
    if kind == "dicts":
        held_out = DataLoader(
            Pairs(), B, num_workers=2, collate_fn=as_dicts, generator=torch.Generator()
        )
    got, result = _fit(
        global_model,
        GLOBAL_LOADERS[kind](),
        2,
        guide=global_guide,
        eval_data=held_out,
        progress=False,
    )
    _assert_equal(expected, got)
    for record, epoch in zip(result.history, losses):
        # Pyro scales a step's loss to the plate's N examples: it counts for N of them.
        per_example = sum(loss * b / N for loss, b in epoch) / sum(b for _, b in epoch)
        assert record["train_loss"] == pytest.approx(per_example, rel=1e-12)
    # fit leaves the RNG where its last evaluation found it
    tensors = (X, torch.arange(N)) if kind == "tuples" else {"x": X, "idx": torch.arange(N)}
    over_tensors = evaluate_elbo(global_model, tensors, guide=global_guide, batch_size=B)
    assert result.history[-1]["test_elbo"] == pytest.approx(over_tensors, rel=1e-6)
    assert not _workers()
    if kind == "tuples":
        compiled, _ = _fit(
            global_model,
            GLOBAL_LOADERS[kind](),
            2,
            guide=global_guide,
            compile=None,
            progress=False,
        )
        _assert_equal(expected, compiled, atol=1e-5)


def _steps(loader_fn, directory: str, steps: int) -> dict[str, torch.Tensor]:
    """A script's run as the user restarts it: seeded, its model and loader built anew."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    fit(
        _vae(),
        loader_fn(),
        steps=steps,
        optim=pyro.optim.Adam({"lr": LR}),
        compile=False,
        progress=False,
        checkpoint_dir=directory,
        checkpoint_every=2,
    )
    return _params()


class _Noisy(Dataset):
    """A dataset that draws noise in the worker that reads it (an augmentation)."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> torch.Tensor:
        return X[i] + 0.1 * torch.randn(X_DIM)


# 3 batches an epoch: a stop after 4 steps is inside epoch 2, after 6 at its end
def test_a_resumed_run_equals_the_uninterrupted_one() -> None:
    def loader() -> DataLoader:  # workers seeded anew from the global RNG every epoch
        return DataLoader(_Noisy(), B, shuffle=True, num_workers=2)

    with tempfile.TemporaryDirectory() as straight:
        expected = _steps(loader, straight, 9)
    for stop in (4, 6):
        with tempfile.TemporaryDirectory() as run, warnings.catch_warnings():
            warnings.simplefilter("error")  # the global RNG is recorded: nothing to say
            _steps(loader, run, stop)
            _assert_equal(expected, _steps(loader, run, 9))
    assert not _workers()


def test_persistent_workers_resume_their_shuffle_and_warn_of_their_own_draws() -> None:
    def loader(dataset: Dataset) -> Callable[[], DataLoader]:
        return lambda: DataLoader(dataset, B, shuffle=True, num_workers=2, persistent_workers=True)

    for dataset, exact in [(TensorDataset(X), True), (_Noisy(), False)]:
        with tempfile.TemporaryDirectory() as straight:
            expected = _steps(loader(dataset), straight, 9)
        with tempfile.TemporaryDirectory() as run:
            _steps(loader(dataset), run, 6)
            with pytest.warns(UserWarning, match="persistent_workers=True.*resumes exactly"):
                resumed = _steps(loader(dataset), run, 9)
        # the shuffle order is the global RNG's; the noise drawn in the workers is not
        assert all(torch.equal(expected[k], resumed[k]) for k in expected) is exact
    assert not _workers()


def test_a_loader_with_its_own_generator_resumes_exactly() -> None:
    def loader() -> DataLoader:  # order and workers' base seed from its own generator
        generator = torch.Generator().manual_seed(3)
        return DataLoader(_Noisy(), B, shuffle=True, num_workers=2, generator=generator)

    with tempfile.TemporaryDirectory() as straight:
        expected = _steps(loader, straight, 9)
    for stop in (4, 6):
        with tempfile.TemporaryDirectory() as run, warnings.catch_warnings():
            warnings.simplefilter("error")  # the generator's state is recorded: nothing to say
            _steps(loader, run, stop)
            _assert_equal(expected, _steps(loader, run, 9))
    assert not _workers()


class _MixedKeys(Dataset):
    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": X[i]} if i < 2 * B else {"y": X[i]}


def _numpy_last(items: list[tuple[torch.Tensor]]) -> torch.Tensor | np.ndarray:
    x = torch.stack([item[0] for item in items])
    return x.numpy() if torch.equal(x[0], X[2 * B]) else x  # batch 2: a numpy array


BAD = {
    "keys": (
        lambda: DataLoader(_MixedKeys(), B, num_workers=2),
        ValueError,
        "batch 2 of data has keywords 'y'",
    ),
    "kind": (
        lambda: DataLoader(TensorDataset(X), B, num_workers=2, collate_fn=_numpy_last),
        TypeError,
        "batch 2 of data has argument 0 a numpy.ndarray, where batch 0 has a Tensor.*collate_fn",
    ),
}


@pytest.mark.parametrize("kind", BAD)
def test_a_bad_batch_gets_one_clear_error(kind: str) -> None:
    make, error, message = BAD[kind]
    vae = _vae()
    with pytest.raises(error, match=message) as raised:
        fit(vae, make(), epochs=1, compile=False, progress=False)
    assert len(str(raised.value).splitlines()) == 1
    with pytest.raises(error, match=message):
        evaluate_elbo(vae, make(), batch_size=B)
    assert not _workers()


def test_a_model_error_before_training_lets_the_workers_go() -> None:
    """fit's first read of the data starts a pass (the loader's workers) that the first
    epoch takes up; a model that fails before it must not keep them alive through the error
    it raises (they lived until the next garbage collection)."""

    def broken(x: torch.Tensor) -> None:
        raise ValueError("a defect of the model")

    loader = DataLoader(TensorDataset(X), B, shuffle=True, num_workers=2)
    with pytest.raises(ValueError, match="a defect of the model") as raised:
        fit(broken, loader, guide=lambda x: None, epochs=1, progress=False)
    assert raised.value is not None  # the error (its traceback, fit's frame) is still held
    assert not _workers()


def test_evaluation_over_a_loader_equals_over_the_tensor() -> None:
    vae = _vae()
    # No shuffle and a generator of the loader's own: the same batches as the tensor's and
    # the same draws of the model's
    loader = DataLoader(TensorDataset(X), B, num_workers=2, generator=torch.Generator())
    for estimate in (evaluate_elbo, iwae_log_likelihood):
        kwargs = {"per_example": True} if estimate is evaluate_elbo else {"num_samples": 5}
        pyro.set_rng_seed(0)
        over_tensor = estimate(vae, X, batch_size=B, **kwargs)
        pyro.set_rng_seed(0)
        over_loader = estimate(vae, loader, **kwargs)
        assert torch.allclose(torch.as_tensor(over_loader), torch.as_tensor(over_tensor), rtol=1e-6)
    assert not _workers()
