"""LightningSVI under the Trainer features a Lightning user reaches for after Pyro's Lightning
example (examples/svi_lightning.py): an LR scheduler from the optimizer factory with
LearningRateMonitor and CSVLogger, ``Trainer.predict`` (the example's ``forward`` is Pyro's
``Predictive``), and ``evaluate_elbo`` of the trained module and of its checkpoint."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive
from pyro.infer.autoguide import AutoNormal
from torch.utils.data import DataLoader, TensorDataset

lightning = pytest.importorskip("lightning")

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from pyro_gen.infer import evaluate_elbo  # noqa: E402
from pyro_gen.lightning import LightningSVI  # noqa: E402
from tests.lightning_trainer import quiet_lightning, quiet_trainer  # noqa: E402

N = 32
torch.manual_seed(0)
C = torch.randn(N)
Y = 0.5 + 2.0 * C + 0.3 * torch.randn(N)


def model(covariates: torch.Tensor, data: torch.Tensor | None = None) -> torch.Tensor:
    """The regression of Pyro's Lightning example, with its data plate of the batch."""
    coeff = pyro.sample("coeff", dist.Normal(0.0, 1.0))
    bias = pyro.sample("bias", dist.Normal(0.0, 1.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(covariates)):
        return pyro.sample("obs", dist.Normal(bias + coeff * covariates, scale), obs=data)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    yield from quiet_lightning()


def _trainer(epochs: int, **kwargs: Any) -> lightning.Trainer:
    return quiet_trainer(max_epochs=epochs, **kwargs)


def _guide() -> AutoNormal:
    """An AutoNormal set up on a batch with the RNG put back: its setup draws the model's
    sites, which Pyro's SVI would draw in its first step and LightningSVI in its trace."""
    guide = AutoNormal(model)
    state = pyro.util.get_rng_state()
    with torch.no_grad():
        guide(C[:8], Y[:8])
    pyro.util.set_rng_state(state)
    return guide


def _pairs() -> DataLoader:
    return DataLoader(TensorDataset(C, Y), batch_size=8, shuffle=True)


def _store() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _halving_adam(params: Any) -> dict[str, Any]:
    opt = torch.optim.Adam(params, lr=0.1)
    return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}


def test_a_scheduler_from_the_optimizer_factory_trains_as_pyros_step_lr_loop(
    tmp_path: Path,
) -> None:
    """Before: TypeError 'optimizer= returned dict, not a torch.optim.Optimizer' for the dict
    configure_optimizers returns; the docstring said to subclass for a scheduler."""
    pyro.set_rng_seed(2)
    guide = _guide()
    step_lr = pyro.optim.StepLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, "step_size": 1, "gamma": 0.5}
    )
    svi = pyro.infer.SVI(model, guide, step_lr, pyro.infer.Trace_ELBO())
    for _ in range(3):
        for batch in _pairs():
            svi.step(*batch)
        step_lr.step()
    expected = _store()

    pyro.clear_param_store()
    pyro.set_rng_seed(2)
    svi = LightningSVI(model, _guide(), optimizer=_halving_adam)
    logger = CSVLogger(tmp_path, name="run")
    trainer = _trainer(3, logger=logger, log_every_n_steps=1, callbacks=[LearningRateMonitor()])
    val = DataLoader(TensorDataset(C, Y), batch_size=16)
    trainer.fit(svi, _pairs(), val)
    got = _store()
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"train_loss", "val_loss", "lr-Adam"} <= set(rows[0])
    assert sorted({float(r["lr-Adam"]) for r in rows if r["lr-Adam"]}) == [0.025, 0.05, 0.1]


def test_predict_draws_pyros_predictive_of_each_batch() -> None:
    """Before: Lightning's MisconfigurationException '`Trainer.predict` requires `forward`
    method to run'. A prediction loader of covariates only predicts ``obs``."""
    guide = _guide()
    svi = LightningSVI(model, guide, optimizer=lambda p: torch.optim.Adam(p, lr=0.1))
    trainer = _trainer(2)
    trainer.fit(svi, _pairs())
    covariates = DataLoader(TensorDataset(C), batch_size=8)
    pyro.set_rng_seed(7)
    predicted = trainer.predict(svi, covariates)
    pyro.set_rng_seed(7)
    for (c,), draws in zip(covariates, predicted, strict=True):
        expected = Predictive(model, guide=guide, num_samples=1)(c)
        assert draws.keys() == {"coeff", "bias", "scale", "obs"} == expected.keys()
        for site, value in expected.items():
            assert torch.equal(draws[site], value), site


def test_evaluate_elbo_of_the_module_and_of_its_loaded_checkpoint(tmp_path: Path) -> None:
    """Before: evaluate_elbo(module, data) raised 'model is a plain callable: pass guide=
    too'. A checkpoint loaded into a fresh store scores as the trained module."""
    svi = LightningSVI(model, _guide(), optimizer=lambda p: torch.optim.Adam(p, lr=0.1))
    checkpoint = ModelCheckpoint(dirpath=tmp_path)
    _trainer(2, enable_checkpointing=True, callbacks=[checkpoint]).fit(svi, _pairs())
    data = {"covariates": C, "data": Y}
    pyro.set_rng_seed(0)
    trained = evaluate_elbo(svi, data, num_particles=8)
    pyro.set_rng_seed(0)
    assert evaluate_elbo(model, data, guide=svi.guide, num_particles=8) == trained

    pyro.clear_param_store()
    guide = AutoNormal(model)
    loaded = LightningSVI.load_from_checkpoint(
        checkpoint.best_model_path, model=model, guide=guide, example_batch=(C[:8], Y[:8])
    )
    assert loaded.guide is guide
    pyro.set_rng_seed(0)
    assert evaluate_elbo(loaded, data, num_particles=8) == trained


def test_a_checkpoint_holding_the_guide_twice_still_loads(tmp_path: Path) -> None:
    """Checkpoints written before the guide module stopped being registered a second time
    (as ``_guide``) hold its tensors under both names: they load, to the same values."""
    svi = LightningSVI(model, _guide(), optimizer=lambda p: torch.optim.Adam(p, lr=0.1))
    trainer = _trainer(1)
    trainer.fit(svi, _pairs())
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    state = saved["state_dict"]
    prefix = "pyro_modules.guide."
    state.update(
        {"_guide." + k[len(prefix) :]: v for k, v in list(state.items()) if k.startswith(prefix)}
    )
    torch.save(saved, path)
    pyro.clear_param_store()
    loaded = LightningSVI.load_from_checkpoint(
        path, model=model, guide=AutoNormal(model), example_batch=(C[:8], Y[:8])
    )
    expected = svi.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(loaded.state_dict()[name], value), name
