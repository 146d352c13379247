"""PyroModules under Pyro's ``pyro.settings.set(module_local_params=True)``: their params
live in the modules, not in the global param store, and ``fit`` must train and resume them."""

from __future__ import annotations

import logging

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.util
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroParam, PyroSample
from torch import nn

from pyro_gen.infer import fit
from pyro_gen.infer.checkpoint import load_checkpoint

N = 16


class Regression(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = PyroModule[nn.Linear](2, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 2]).to_event(2))
        # every param a PyroParam: Pyro's own SVI step needs each param site's
        # .unconstrained, which a plain nn.Parameter lacks under module_local_params
        self.linear.bias = PyroParam(torch.zeros(1))
        self.sigma = PyroParam(torch.tensor(1.0), constraint=constraints.positive)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, self.sigma), obs=y)


def _xy() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 2, generator=g)
    return x, x @ torch.tensor([1.0, -2.0]) + 0.3 * torch.randn(N, generator=g)


def _state(*modules: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(modules)
            for k, v in m.named_parameters()}  # fmt: skip


@pytest.fixture(autouse=True)
def _module_local_params():
    with pyro.settings.context(module_local_params=True):
        yield


def _train(
    mode: str, steps: int = 4, make_optim=lambda: pyro.optim.Adam({"lr": 0.05}), **kwargs
) -> dict[str, torch.Tensor]:
    pyro.set_rng_seed(0)
    model = Regression()
    guide = AutoNormal(model)
    x, y = _xy()
    optim = make_optim()
    if mode == "svi":
        rng = pyro.util.get_rng_state()  # fit's warm-up call leaves the RNG as it was
        guide(x, y)
        pyro.util.set_rng_state(rng)
        svi = SVI(model, guide, optim, Trace_ELBO())
        for _ in range(steps):
            perm = torch.randperm(N)  # fit draws each epoch's order first
            svi.step(x[perm], y[perm])
    else:
        fit(model, (x, y), guide=guide, steps=steps, batch_size=N, optim=optim, progress=False,
            compile=None if mode == "compiled" else False, **kwargs)  # fmt: skip
    assert len(pyro.get_param_store()) == 0  # the params are the modules' own
    return _state(model, guide)


def test_the_plain_step_trains_module_local_params_as_pyros_svi():
    ours, theirs = _train("plain"), _train("svi")
    assert ours.keys() == theirs.keys() and len(ours) == 4
    for name, value in ours.items():
        assert torch.equal(value, theirs[name]), name


def test_the_compiled_step_records_module_local_params(caplog):
    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        ours = _train("compiled")
    assert "compiled SVI step off" not in caplog.text
    theirs = _train("svi")
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("mode", ["plain", "compiled"])
def test_a_resumed_fit_equals_a_straight_one(tmp_path, mode):
    # The optimizer's state of these params is kept under their site names (Pyro's
    # get_state files them all under None): before, a resume restarted Adam's moments
    # (sigma 0.2942 against 0.2802 after 6 steps).
    straight = _train(mode, steps=6, checkpoint_dir=tmp_path / "a")
    _train(mode, steps=3, checkpoint_dir=tmp_path / "b")
    resumed = _train(mode, steps=6, checkpoint_dir=tmp_path / "b")
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


@pytest.mark.parametrize("mode", ["plain", "compiled"])
def test_a_resumed_fit_keeps_clipped_adams_decayed_rate(tmp_path, mode, caplog):
    """ClippedAdam decays its rate by ``lrd`` each step. Resumed with the same arguments,
    these params' saved rate (decayed) was taken for a changed argument and set back to the
    given ``lr`` (logged as "lr 0.00625 -> 0.05"): the resumed run took 8 times the
    straight run's steps. Their arguments are now recorded and compared as the store's."""

    def make_optim() -> pyro.optim.PyroOptim:
        return pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.5})

    straight = _train(mode, 6, make_optim, checkpoint_dir=tmp_path / "a")
    _train(mode, 3, make_optim, checkpoint_dir=tmp_path / "b")
    with caplog.at_level(logging.WARNING, logger="pyro_gen"):
        resumed = _train(mode, 6, make_optim, checkpoint_dir=tmp_path / "b")
    assert "optimizer arguments given" not in caplog.text
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


def test_a_resume_keeps_each_params_moments_and_applies_a_new_learning_rate(tmp_path, caplog):
    _train("plain", steps=3, checkpoint_dir=tmp_path)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["optim"]
    assert None not in saved and "AutoNormal.locs.linear.weight" in saved
    pyro.set_rng_seed(0)
    model, optim = Regression(), pyro.optim.Adam({"lr": 0.01})
    guide = AutoNormal(model)
    with caplog.at_level(logging.WARNING, logger="pyro_gen"):
        fit(
            model,
            _xy(),
            guide=guide,
            steps=3,
            batch_size=N,
            optim=optim,
            progress=False,
            checkpoint_dir=tmp_path,
        )  # fmt: skip  (steps=3: restores, trains nothing)
    # said, as for the store's params: the learning rate differs from the checkpoint's
    assert "optimizer arguments given: lr=0.01 (the checkpoint's: 0.05) for 4 params" in caplog.text
    held = {id(p): o for p, o in optim.optim_objs.items()}
    assert len(held) == 4  # every param got its optimizer back before any step
    for o in held.values():
        assert int(next(iter(o.state.values()))["step"]) == 3
        assert o.param_groups[0]["lr"] == 0.01


def test_a_plain_parameter_outside_the_store_is_named():
    class Plain(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(()))

        def forward(self, y: torch.Tensor) -> None:
            with pyro.plate("data", y.shape[0]):
                pyro.sample("obs", dist.Normal(self.loc, 1.0), obs=y)

    with pytest.raises(ValueError, match="'loc'.*declare it a PyroParam"):
        fit(Plain(), torch.randn(8), guide=lambda y: None, steps=1, progress=False)
