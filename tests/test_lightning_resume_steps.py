"""Resuming ``LightningSVI`` under ``Trainer(max_steps=...)``: a run stopped at an epoch's end,
checkpointed and resumed to a larger ``max_steps`` is, bit for bit, the run never stopped.

Lightning marks the loops of a ``max_steps`` run as restarting inside an epoch on every resume
(see :mod:`pyro_gen.lightning_resume`): from a checkpoint saved at an epoch's end the resumed
run trained one batch of the next shuffle and started another epoch, or with a validation
loader trained none and drew a second shuffle.
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

lightning = pytest.importorskip("lightning")

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from pyro_gen.lightning import LightningSVI  # noqa: E402

DATA = 3.0 + torch.randn(32, generator=torch.Generator().manual_seed(1))  # 4 batches of 8


def _model(x: torch.Tensor) -> None:
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)


class _Losses(lightning.Callback):
    """Each step's epoch, batch index and loss, to say where two runs part."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.steps.append((trainer.current_epoch, batch_idx, outputs["loss"].item()))


def _run(steps: int, where: Path, save: str, val: bool, ckpt: Path | None = None, seed: int = 0):
    pyro.clear_param_store()
    lightning.seed_everything(seed, verbose=False)
    guide = pyro.infer.autoguide.AutoNormal(_model)
    svi = LightningSVI(_model, guide, optimizer=functools.partial(torch.optim.Adam, lr=0.1))
    losses = _Losses()
    callbacks = [losses]
    if save == "ModelCheckpoint":  # saves last.ckpt at each epoch's end
        callbacks.append(ModelCheckpoint(dirpath=where, save_last=True))
    trainer = lightning.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=save == "ModelCheckpoint",
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(DATA), batch_size=8, shuffle=True
    )
    val_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(DATA[:8]))
    trainer.fit(svi, loader, val_loader if val else None, ckpt_path=ckpt)
    if save == "save_checkpoint":
        trainer.save_checkpoint(where / "last.ckpt")
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return params, losses.steps, trainer


@pytest.mark.parametrize("val", [False, True], ids=["no_val", "val_loader"])
@pytest.mark.parametrize("save", ["save_checkpoint", "ModelCheckpoint"])
def test_resume_at_an_epoch_end_under_max_steps_is_the_run_never_stopped(
    tmp_path: Path, save: str, val: bool
) -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole, whole_steps, _ = _run(12, tmp_path / "whole", save, val)
        _, first_steps, _ = _run(4, tmp_path / "first", save, val)
        # another seed, as a new process would have: the checkpoint's states replace it
        resumed, resumed_steps, trainer = _run(
            12, tmp_path / "resumed", save, val, tmp_path / "first" / "last.ckpt", seed=123
        )
    assert first_steps + resumed_steps == whole_steps  # same epochs, batches and losses
    assert trainer.global_step == 12 and trainer.current_epoch == 3
    assert whole.keys() == resumed.keys()
    for name, value in whole.items():
        assert torch.equal(value, resumed[name]), name
    # the loop's decision is Lightning's own again for a later fit on this trainer
    assert "_iteration_based_training" not in vars(trainer.fit_loop)
