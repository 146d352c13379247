"""Pyro's own ``examples/svi_lightning.py`` program through :class:`LightningSVI`.

Pyro's example trains a ``PyroModule`` regression with an ``AutoNormal`` guide by a plain
``LightningModule`` around ``Trace_ELBO()(model, guide)``. The same program, seed and
batches must give the same parameters through ``LightningSVI``, whether handed the model
and guide or that ``ELBOModule``; misuse that trained nothing, silently, is named.
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule
from torch.utils.data import DataLoader, TensorDataset

lightning = pytest.importorskip("lightning")

from pyro_gen.lightning import LightningSVI  # noqa: E402
from tests.lightning_trainer import quiet_trainer  # noqa: E402

N = 64
_adam = functools.partial(torch.optim.Adam, lr=0.02)


@pytest.fixture(autouse=True)
def _quiet():
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class Regression(PyroModule):
    """Pyro's example model: global latents beside a subsampling data plate."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, covariates: torch.Tensor, data: torch.Tensor | None = None):
        coeff = pyro.sample("coeff", dist.Normal(0.0, 1.0))
        bias = pyro.sample("bias", dist.Normal(0.0, 1.0))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", self.size, len(covariates)):
            return pyro.sample("obs", dist.Normal(bias + coeff * covariates, scale), obs=data)


class PyrosPlan(lightning.LightningModule):
    """What Pyro's example writes: the ELBOModule is the loss, its parameters the optimizer's."""

    def __init__(self, loss_fn: torch.nn.Module) -> None:
        super().__init__()
        self.loss_fn = loss_fn

    def training_step(self, batch, batch_idx):
        return self.loss_fn(*batch)

    def configure_optimizers(self):
        return _adam(self.loss_fn.parameters())


def _loader() -> DataLoader:
    torch.manual_seed(1)
    x = torch.randn(N)
    return DataLoader(TensorDataset(x, 3 + 2 * x + 0.5 * torch.randn(N)), batch_size=16)


def _trainer(steps: int, **kwargs) -> lightning.Trainer:
    return quiet_trainer(max_steps=steps, **kwargs)


def _train(how: str, steps: int = 6) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = Regression(N)
    guide = AutoNormal(model)
    loader = _loader()
    if how == "pyro":
        loss_fn = Trace_ELBO()(model, guide)
        loss_fn(*next(iter(loader)))  # Pyro's example warms up to create the parameters
        plan = PyrosPlan(loss_fn)
    elif how == "pair":
        plan = LightningSVI(model, guide, optimizer=_adam)
    else:
        plan = LightningSVI(Trace_ELBO()(model, guide), optimizer=_adam)
    torch.manual_seed(0)  # LightningSVI's own trace leaves the RNG alone
    _trainer(steps).fit(plan, loader)
    return {k: v.detach().clone() for k, v in guide.named_parameters()}


def test_pyros_lightning_example_trains_to_the_same_parameters() -> None:
    with pyro.settings.context(module_local_params=True):
        reference = _train("pyro")
        pair, bound = _train("pair"), _train("elbo_module")
    assert len(reference) == 6
    for name, value in reference.items():
        assert torch.equal(pair[name], value), name
        assert torch.equal(bound[name], value), name


def test_an_elbo_module_keeps_its_own_loss_settings() -> None:
    """Before, an ELBOModule passed as the model trained with a default Trace_ELBO: its
    num_particles=4 was dropped silently."""
    model = Regression(N)
    elbo = Trace_ELBO(num_particles=4)
    svi = LightningSVI(elbo(model, AutoNormal(model)))
    assert svi.loss is elbo
    with pytest.raises(TypeError, match="brings its own guide and loss"):
        LightningSVI(elbo(model, AutoNormal(model)), loss=Trace_ELBO())


def test_an_elbo_module_as_the_loss_is_named() -> None:
    """Before: ``TypeError: Regression.forward() takes from 2 to 3 positional arguments``."""
    model = Regression(N)
    guide = AutoNormal(model)
    with pytest.raises(TypeError, match=r"loss is an ELBOModule .* pass it as the model"):
        LightningSVI(model, guide, loss=Trace_ELBO()(model, guide))


def test_the_example_resumes_from_lightnings_checkpoint_in_the_global_store(
    tmp_path: Path,
) -> None:
    """Without module_local_params the guide's params live in Pyro's store; resuming from
    Lightning's own checkpoint continues the run exactly."""

    def run(epochs: int, ckpt: Path | None = None):
        pyro.clear_param_store()
        lightning.seed_everything(0, verbose=False)
        model = Regression(N)
        svi = LightningSVI(model, AutoNormal(model), optimizer=_adam)
        trainer = _trainer(-1, max_epochs=epochs)
        trainer.fit(svi, _loader(), ckpt_path=ckpt)
        params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
        return params, trainer

    whole, _ = run(2)
    _, half = run(1)
    half.save_checkpoint(tmp_path / "half.ckpt")
    resumed, _ = run(2, tmp_path / "half.ckpt")
    assert set(whole) == set(resumed) and len(whole) == 6
    for name, value in whole.items():
        assert torch.equal(resumed[name], value), name


def _plain(x: torch.Tensor) -> None:
    loc = pyro.param("loc", torch.zeros(()))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)


def _clearing(x: torch.Tensor) -> None:
    pyro.clear_param_store()  # a line copied from a notebook's training loop
    _plain(x)


class _ClearEachBatch(lightning.Callback):
    def on_train_batch_end(self, *args) -> None:
        pyro.clear_param_store()


@pytest.mark.parametrize("model, callbacks", [(_clearing, []), (_plain, [_ClearEachBatch()])])
def test_a_store_cleared_during_training_is_named(model, callbacks) -> None:
    """Before, both trained nothing silently: the loss used fresh pyro.param leaves while
    the optimizer stepped the adopted ones (``loc`` stayed 0)."""
    data = DataLoader(TensorDataset(torch.randn(32) + 3), batch_size=8)
    svi = LightningSVI(model, lambda x: None)
    with pytest.raises(RuntimeError, match=r"no longer holds 'loc' .* during training"):
        _trainer(4, callbacks=callbacks).fit(svi, data)
