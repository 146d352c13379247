"""The Lightning adapter on the device, in float32 and with bf16 autocast."""

from __future__ import annotations

import logging
import warnings

import pyro
import pytest
from torch.utils.data import DataLoader, TensorDataset

from pyro_gen.data import load
from pyro_gen.infer import evaluate_elbo
from pyro_gen.vae import VAE
from tests.cuda.tier import DEVICE, MARKS

lightning = pytest.importorskip("lightning")
from pyro_gen.lightning import LightningSVI  # noqa: E402

pytestmark = MARKS


class _ParameterDevices(lightning.Callback):
    """The device types the module's parameters were on at each training step."""

    def __init__(self, module) -> None:
        self.module, self.types = module, set()

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.types |= {p.device.type for p in self.module.parameters()}


def _train(precision: str) -> float:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = (load("digits", "train")[0].float() / 16).round()
    vae = VAE(event_shape=(8, 8), z_dim=8, hidden_dim=64)
    trainer = lightning.Trainer(
        max_steps=300,
        accelerator="gpu" if DEVICE.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    seen = _ParameterDevices(vae)
    trainer.callbacks.append(seen)
    trainer.fit(LightningSVI(vae), DataLoader(TensorDataset(x), batch_size=64, shuffle=True))
    assert seen.types == {DEVICE.type}  # trained there (Lightning moves it back to the CPU)
    vae.to(DEVICE)
    x_test = (load("digits", "test")[0].float() / 16).round().to(DEVICE)
    pyro.set_rng_seed(1)
    return float(evaluate_elbo(vae, x_test, num_particles=10))


def test_float32_and_bf16_autocast_train_alike():
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full, mixed = _train("32-true"), _train("bf16-mixed")
    assert full > -30  # trained: the untrained VAE scores about -45
    assert mixed == pytest.approx(full, abs=1.0)
