"""Resuming a user's own Pyro program from fit's checkpoint_dir: refusals that name the change."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch

from pyro_gen.infer import CheckpointError, fit


def _model(x: torch.Tensor) -> None:
    scale = pyro.param("scale", torch.ones(3), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(0.0, scale).to_event(1), obs=x)


def _fit(tmp_path, optim: pyro.optim.PyroOptim, epochs: int) -> None:
    pyro.clear_param_store()
    fit(
        _model,
        torch.randn(8, 3),
        guide=lambda x: None,
        epochs=epochs,
        batch_size=4,
        optim=optim,
        checkpoint_dir=tmp_path,
        progress=False,
        compile=False,
    )


def test_resuming_with_another_optimizer_names_both(tmp_path) -> None:
    # Pyro loaded Adam's state into SGD at its first step, which failed with KeyError 'momentum'
    _fit(tmp_path, pyro.optim.Adam({"lr": 0.01}), epochs=1)
    with pytest.raises(CheckpointError, match="optimizer Adam but this run passes SGD"):
        _fit(tmp_path, pyro.optim.SGD({"lr": 0.01}), epochs=2)
    scheduled = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}, "gamma": 0.9}
    )
    with pytest.raises(CheckpointError, match=r"passes ExponentialLR\(Adam\)"):
        _fit(tmp_path, scheduled, epochs=2)
    _fit(tmp_path, pyro.optim.Adam({"lr": 0.01}), epochs=2)  # the same optimizer resumes
