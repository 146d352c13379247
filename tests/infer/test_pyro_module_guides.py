"""Users' PyroModule programs (Pyro's "Modules in Pyro" tutorial idioms: ``PyroSample``
priors that read other attributes, constrained ``PyroParam``, ``PyroModule[nn.Linear]``,
``to_pyro_module_``, nested modules, a subsampled plate) with Pyro's autoguides, pyro_gen's
``AutoAmortizedNormal`` and a hand-written guide on pyro_gen's IAF: ``fit`` trains them as
Pyro's own SVI loop does, resumes bit for bit, and Lightning trains them as SVI does."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.util
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoMultivariateNormal
from pyro.infer.autoguide.initialization import init_to_feasible
from pyro.nn import PyroModule, PyroParam, PyroSample
from pyro.nn.module import to_pyro_module_
from torch import nn

from pyro_gen.infer import fit
from pyro_gen.transforms.autoregressive import inverse_autoregressive
from pyro_gen.vae.autoguide import AutoAmortizedNormal

N = 16


class Prior(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.loc = PyroParam(torch.zeros(2))
        self.scale = PyroParam(torch.ones(2), constraint=constraints.interval(0.1, 5.0))
        # a prior that reads the module's own params, resolved at each access
        self.w = PyroSample(lambda self: dist.Normal(self.loc, self.scale).to_event(1))


class Regression(PyroModule):
    """Nested PyroModules: the weight's prior lives in a child module."""

    def __init__(self) -> None:
        super().__init__()
        self.prior = Prior()
        self.noise = PyroParam(torch.tensor(1.0), constraint=constraints.positive)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        w = self.prior.w
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal((x * w).sum(-1), self.noise), obs=y)


class BayesianNet(PyroModule):
    """An ordinary nn.Sequential made Bayesian in place (to_pyro_module_, then PyroSample)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        to_pyro_module_(self.net)
        for layer in (self.net[0], self.net[2]):
            for name, value in list(layer.named_parameters(recurse=False)):
                prior = dist.Normal(0.0, 1.0).expand(value.shape).to_event(value.dim())
                setattr(layer, name, PyroSample(prior))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        mean = self.net(x).squeeze(-1)  # weights drawn outside the data plate, once
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, 0.5), obs=y)


class BayesianDecoderVAE(PyroModule):
    """Local z under a subsampled data plate, a global PyroSample decoder weight."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = PyroModule[nn.Linear](2, 3)
        self.decoder.weight = PyroSample(dist.Normal(0.0, 1.0).expand([3, 2]).to_event(2))

    def forward(self, x: torch.Tensor) -> None:
        self.decoder.weight  # drawn once here, outside the data plate, as Pyro advises
        with pyro.plate("data", N, subsample_size=8) as idx:
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x[idx])


class IAFGuide(PyroModule):
    """A hand-written guide: a pyro_gen IAF made a PyroModule, so the guide owns its params."""

    def __init__(self) -> None:
        super().__init__()
        self.loc = PyroParam(torch.zeros(2))
        self.scale = PyroParam(torch.ones(2), constraint=constraints.positive)
        self.iaf = inverse_autoregressive(2, [4])
        to_pyro_module_(self.iaf)  # in place

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        base = dist.Normal(self.loc, self.scale).to_event(1)
        pyro.sample("prior.w", dist.TransformedDistribution(base, [self.iaf]))


def _xy() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 2, generator=g)
    return x, x @ torch.tensor([1.0, -2.0]) + 0.3 * torch.randn(N, generator=g)


def _x3() -> tuple[torch.Tensor]:
    return (torch.randn(N, 3, generator=torch.Generator().manual_seed(1)),)


CASES: dict[str, tuple[Callable, Callable, Callable]] = {
    "nested_constrained_mvn": (Regression, AutoMultivariateNormal, _xy),
    "nested_hand_written_iaf": (Regression, lambda m: IAFGuide(), _xy),
    "to_pyro_module_delta": (BayesianNet, AutoDelta, _xy),
    "bayesian_decoder_amortized": (
        BayesianDecoderVAE,
        functools.partial(AutoAmortizedNormal, hidden_dims=(4,), input_fn=lambda x: x),
        _x3,
    ),
}


def _store() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _train(case: str, mode: str, steps: int = 4) -> dict[str, torch.Tensor]:
    make_model, make_guide, make_data = CASES[case]
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = make_model()
    guide = make_guide(model)
    data = make_data()
    optim = pyro.optim.Adam({"lr": 0.05})
    if mode == "svi":
        rng = pyro.util.get_rng_state()  # fit's warm-up call leaves the RNG as it was
        guide(*data)
        pyro.util.set_rng_state(rng)
        svi = SVI(model, guide, optim, Trace_ELBO())
        for _ in range(steps):
            perm = torch.randperm(N)  # fit draws each epoch's order first
            svi.step(*(d[perm] for d in data))
    else:
        fit(model, data if len(data) > 1 else data[0], guide=guide, steps=steps, batch_size=N,
            optim=optim, progress=False, compile=None if mode == "compiled" else False)  # fmt: skip
    return _store()


@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_compiled_and_plain_match_pyros_svi(case: str, caplog):
    theirs = _train(case, "svi")
    # every module's params reached the store: none silently left untrained
    assert len(theirs) >= 3
    for mode in ("compiled", "plain"):
        with caplog.at_level(logging.INFO, logger="pyro_gen"):
            ours = _train(case, mode)
        if mode == "compiled":  # the default step did record, not fall back to plain SVI
            assert "recorded the ELBO step" in caplog.text
            assert "compiled SVI step off" not in caplog.text
        assert ours.keys() == theirs.keys(), mode
        for name, value in ours.items():
            torch.testing.assert_close(value, theirs[name], atol=1e-6, rtol=1e-5,
                                       msg=f"{mode} {name}")  # fmt: skip


def test_the_hand_written_guides_iaf_params_are_trained():
    pyro.set_rng_seed(0)  # the initialization _train's guide gets
    Regression()
    initial = {f"iaf.{k}": v.detach().clone() for k, v in IAFGuide().iaf.named_parameters()}
    trained = _train("nested_hand_written_iaf", "compiled")
    assert initial and initial.keys() <= trained.keys()
    for name, value in initial.items():
        assert not torch.equal(trained[name], value), name


@pytest.mark.parametrize("compile", [None, False])
def test_a_resumed_fit_equals_a_straight_one(tmp_path, compile):
    runs = []
    for split in (False, True):
        directory = tmp_path / f"{split}"
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        for steps in (3, 7) if split else (7,):
            pyro.clear_param_store()  # a resume starts from a fresh process's state
            model = BayesianDecoderVAE()
            guide = AutoAmortizedNormal(model, hidden_dims=(4,), input_fn=lambda x: x)
            fit(model, _x3()[0], guide=guide, steps=steps, batch_size=N, compile=compile,
                checkpoint_dir=directory, optim=pyro.optim.Adam({"lr": 0.05}),
                progress=False)  # fmt: skip
        runs.append(_store())
    assert runs[0].keys() == runs[1].keys()
    for name, value in runs[0].items():
        assert torch.equal(value, runs[1][name]), name


def test_lightning_trains_a_pyromodule_as_pyros_svi_does():
    lightning = pytest.importorskip("lightning")
    from pyro_gen.lightning import LightningSVI

    runs = []
    x, y = _xy()
    for use_lightning in (True, False):
        pyro.clear_param_store()
        model = Regression()
        # a deterministic initialization: Lightning's setup draws from the RNG
        guide = AutoDelta(model, init_loc_fn=init_to_feasible)
        if use_lightning:
            module = LightningSVI(
                model, guide, optimizer=functools.partial(torch.optim.Adam, lr=0.05)
            )
            trainer = lightning.Trainer(max_steps=4, accelerator="cpu", logger=False,
                                        enable_checkpointing=False, enable_progress_bar=False,
                                        enable_model_summary=False)  # fmt: skip
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), N)
            trainer.fit(module, loader)
        else:
            guide(x, y)
            svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
            for _ in range(4):
                svi.step(x, y)
        runs.append(_store())
    assert (
        runs[0].keys()
        == runs[1].keys()
        == {"AutoDelta.prior.w", "prior.loc", "prior.scale", "noise"}
    )
    for name, value in runs[0].items():
        torch.testing.assert_close(value, runs[1][name], msg=name)
