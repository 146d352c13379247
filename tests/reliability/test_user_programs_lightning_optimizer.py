"""``LightningSVI(optimizer=...)`` with a user's optimizer factory that does not build the
optimizer from the parameters it is given: one that forgot its ``return`` (Lightning then
"runs with no optimizer", a warning among its log lines) and one that closes over tensors
of the user's own (an earlier model's) both trained nothing: the user's model and guide
kept their initial values through every epoch, with no error. Now ``Trainer.fit`` refuses
them before the first step, naming ``optimizer=``; factories that build from the given
parameters (one optimizer, a list of them, parameter groups) train as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from torch.utils.data import DataLoader, TensorDataset

lightning = pytest.importorskip("lightning")

from pyro_gen.lightning import LightningSVI  # noqa: E402
from tests.lightning_trainer import quiet_lightning  # noqa: E402

torch.manual_seed(0)
X = torch.randn(32, 3) + 2.0
LOADER = DataLoader(TensorDataset(X), batch_size=8)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    yield from quiet_lightning()


def model(x: torch.Tensor) -> None:
    loc = pyro.param("loc", torch.zeros(3))
    scale = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)


def guide(x: torch.Tensor) -> None:
    pass


def train(optimizer: Any) -> None:
    trainer = lightning.Trainer(max_epochs=1, accelerator="cpu", logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)  # fmt: skip
    trainer.fit(LightningSVI(model, guide=guide, optimizer=optimizer), LOADER)


def loc() -> torch.Tensor:
    return pyro.param("loc").detach().clone()


def test_a_factory_that_returns_nothing_is_refused_before_a_step() -> None:
    def forgot_return(params: Any) -> None:
        torch.optim.Adam(params, lr=0.1)

    with pytest.raises(TypeError, match="optimizer= returned NoneType, not a torch.optim"):
        train(forgot_return)
    assert torch.equal(loc(), torch.zeros(3))


def test_a_factory_over_other_tensors_is_refused_naming_how_many_are_left_out() -> None:
    mine = torch.zeros(3, requires_grad=True)
    with pytest.raises(
        ValueError, match=r"leaves out 2 of the 2 parameters .* \(optimizer\(params\)\)"
    ):
        train(lambda params: torch.optim.Adam([mine], lr=0.1))
    with pytest.raises(ValueError, match="leaves out 1 of the 2 parameters"):
        train(lambda params: torch.optim.Adam(list(params)[:1], lr=0.1))
    assert torch.equal(loc(), torch.zeros(3))


@pytest.mark.parametrize(
    "build",
    [
        lambda params: torch.optim.Adam(params, lr=0.1),
        lambda params: [torch.optim.SGD(params, lr=0.01)],
        lambda params: torch.optim.Adam(
            [{"params": list(params)[:1], "lr": 0.1}, {"params": list(params)[1:]}], lr=0.01
        ),
    ],
    ids=["one", "a_list", "param_groups"],
)
def test_factories_that_build_from_the_given_parameters_train(build: Any) -> None:
    train(build)
    assert (loc() > 0).all()  # moved toward the data's mean of 2 from 0
