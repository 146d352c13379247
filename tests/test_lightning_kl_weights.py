"""LightningSVI's ``annealing`` is checked as ``fit``'s is: a KL weight must be a finite number
>= 0. A schedule returning -0.5 rewarded divergence from the prior without a word, and one
without a ``return`` failed inside ``float()``. It anneals an autoguide (a module guide) as
``fit`` does, and the validation loss stays the plain negative ELBO, as ``fit``'s."""

from __future__ import annotations

import functools
import logging
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from torch.utils.data import DataLoader, TensorDataset

lightning = pytest.importorskip("lightning")

from pyro_gen.infer import fit  # noqa: E402
from pyro_gen.lightning import LightningSVI  # noqa: E402
from tests.lightning_trainer import quiet_trainer  # noqa: E402

X = torch.randn(16)


def _model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _guide(x: torch.Tensor) -> None:
    loc = pyro.param("q_loc", torch.zeros(()))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, 0.5))


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


def _trainer(epochs: int) -> lightning.Trainer:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    return quiet_trainer(max_epochs=epochs)


def _warming(step: int) -> float:
    return min(1.0, step / 4)


def test_an_autoguide_is_annealed_as_fit_anneals_it() -> None:
    """Before: TypeError 'cannot assign ... as child module _guide' when built: the module
    guide was registered a second time (its parameters twice in every checkpoint) and the
    annealed guide, a function, could not replace it."""

    def run(by_lightning: bool) -> dict[str, torch.Tensor]:
        pyro.clear_param_store()
        guide = AutoNormal(_model)
        pyro.set_rng_seed(3)
        data = DataLoader(TensorDataset(X), batch_size=4, shuffle=True)
        if by_lightning:
            adam = functools.partial(torch.optim.Adam, lr=0.1)
            svi = LightningSVI(_model, guide, annealing=_warming, optimizer=adam)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _trainer(2).fit(svi, data)
            assert not any(k.startswith("_guide") for k in svi.state_dict())
        else:
            optim = pyro.optim.Adam({"lr": 0.1})
            # compile=False: Pyro's SVI step, to the bit (fit's compiled step rounds otherwise)
            fit(_model, data, guide=guide, optim=optim, annealing=_warming, epochs=2,
                compile=False, progress=False)  # fmt: skip
        return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    by_fit, by_lightning = run(False), run(True)
    assert by_fit.keys() == by_lightning.keys() == {"AutoNormal.locs.z", "AutoNormal.scales.z"}
    for name, value in by_fit.items():
        assert torch.equal(by_lightning[name], value), name


def test_the_validation_loss_under_annealing_is_the_negative_elbo() -> None:
    """Before: scored with the last step's KL weight (here 0: the latent's terms left out),
    where fit's held-out loss is the plain ELBO's."""
    pyro.clear_param_store()
    svi = LightningSVI(_model, _guide, annealing=lambda step: 0.0)
    trainer = _trainer(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(svi, DataLoader(TensorDataset(X), batch_size=4))
        pyro.set_rng_seed(0)
        (scores,) = trainer.validate(svi, DataLoader(TensorDataset(X), batch_size=16))
    pyro.set_rng_seed(0)
    next(iter(DataLoader(X)))  # the loader's iterator draws its seed first
    expected = pyro.infer.Trace_ELBO().loss(_model, _guide, X) / len(X)
    assert scores["val_loss"] == pytest.approx(expected, rel=1e-6)
