"""LightningSVI's ``annealing`` is checked as ``fit``'s is: a KL weight must be a finite number
>= 0. A schedule returning -0.5 rewarded divergence from the prior without a word, and one
without a ``return`` failed inside ``float()``."""

from __future__ import annotations

import logging
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

lightning = pytest.importorskip("lightning")

from pyro_gen.lightning import LightningSVI  # noqa: E402


def _model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _guide(x: torch.Tensor) -> None:
    loc = pyro.param("q_loc", torch.zeros(()))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, 1.0))


@pytest.mark.parametrize(
    "schedule, error, message",
    [
        (lambda step: -0.5, ValueError, r"annealing returned -0\.5 at step 0: the KL weight"),
        (lambda step: None, TypeError, r"annealing returned None at step 0.*return its value"),
        (lambda step: float("nan"), ValueError, r"annealing returned nan at step 0"),
    ],
    ids=["negative", "no_return", "nan"],
)
def test_a_bad_kl_weight_is_one_error_naming_the_step(schedule, error, message) -> None:
    pyro.clear_param_store()
    svi = LightningSVI(_model, _guide, annealing=schedule)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8)), 4)
    trainer = lightning.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings(), pytest.raises(error, match=message):
        warnings.simplefilter("ignore")
        trainer.fit(svi, data)
