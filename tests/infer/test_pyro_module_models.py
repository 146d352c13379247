"""Models written with PyroModule and PyroSample (Pyro's Bayesian regression tutorial) train
with fit's compiled step as with Pyro's own SVI step."""

from __future__ import annotations

import logging

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDiagonalNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

from pyro_gen.infer import fit


class BayesianRegression(PyroModule):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, 1)
        # expand() makes the prior's loc and scale tensors whose elements share memory
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, in_features]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def _train(compile: bool | None) -> dict[str, torch.Tensor]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.randn(40, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.5 * torch.randn(40)
    model = BayesianRegression(3)
    fit(model, (x, y), guide=AutoDiagonalNormal(model), steps=8, batch_size=40,
        optim=pyro.optim.Adam({"lr": 0.03}), compile=compile, progress=False)  # fmt: skip
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_pyrosample_priors_run_through_torchscript_and_match_pyros_step(caplog):
    """The expanded prior constants once made the recording's buffer restore fail: the
    default step then quietly ran without TorchScript, and compile=True fell back."""
    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        ours = _train(None)
    assert "TorchScript could not take" not in caplog.text
    assert "compiled SVI step off" not in caplog.text
    assert "compiled the ELBO step (jit)" in caplog.text
    plain = _train(False)
    assert ours.keys() == plain.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
