"""Optimizers ``fit`` cannot train with, and resumes whose optimizer arguments need state the
checkpoint does not hold: one error, before any step, saying what to pass instead."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.optim.multi
import pytest
import torch

from pyro_gen.infer import CheckpointError, fit


def _model(x: torch.Tensor) -> None:
    loc = pyro.param("loc", torch.zeros(3))
    scale = pyro.param("scale", torch.ones(3), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)


def _fit(optim: object, steps: int = 2, checkpoint_dir=None, compile: bool | None = False):
    pyro.clear_param_store()
    return fit(
        _model,
        torch.randn(8, 3, generator=torch.Generator().manual_seed(0)) + 1.0,
        guide=lambda x: None,
        steps=steps,
        batch_size=4,
        optim=optim,
        checkpoint_dir=checkpoint_dir,
        progress=False,
        compile=compile,
    )


@pytest.mark.parametrize(
    "make_optim, match",
    [
        # a multi-optimizer was refused as "got PyroMultiOptimizer", naming no way out
        (
            lambda: pyro.optim.multi.PyroMultiOptimizer(pyro.optim.Adam({"lr": 0.1})),
            r"PyroMultiOptimizer, which steps .*own loop.*the PyroOptim it wraps, its \.optim",
        ),
        (
            lambda: pyro.optim.multi.TorchMultiOptimizer(torch.optim.Adam, {"lr": 0.1}),
            r"TorchMultiOptimizer, .*pyro\.optim\.PyroOptim\(torch\.optim\.Adam, \{'lr': 0\.1\}\)",
        ),
        (lambda: pyro.optim.multi.Newton(), r"Newton, which steps .*own loop"),
        (
            lambda: pyro.optim.multi.MixedMultiOptimizer([("loc", pyro.optim.Adam({"lr": 0.1}))]),
            r"MixedMultiOptimizer, which steps .*own loop",
        ),
    ],
)
def test_a_multi_optimizer_is_refused_saying_what_to_pass(make_optim, match):
    with pytest.raises(TypeError, match=match):
        _fit(make_optim())


@pytest.mark.parametrize("compile", [False, None])
@pytest.mark.parametrize(
    "make_optim",
    [
        lambda: pyro.optim.PyroOptim(torch.optim.LBFGS, {"lr": 0.1}),
        lambda: pyro.optim.StepLR(
            {"optimizer": torch.optim.LBFGS, "optim_args": {"lr": 0.1}, "step_size": 1}
        ),
    ],
)
def test_an_optimizer_needing_a_closure_is_refused_before_training(make_optim, compile):
    """LBFGS failed at the first step, after fit's checks and (compiled) a recording, with
    torch's "step() missing 1 required positional argument: 'closure'", which says neither
    why (SVI never passes one) nor what to do."""
    with pytest.raises(TypeError, match=r"LBFGS.*closure.*SVI.*pyro\.optim\.Adam"):
        _fit(make_optim(), compile=compile)
    assert len(pyro.get_param_store()) == 0  # refused before the model ran


@pytest.mark.parametrize("compile", [False, None])
@pytest.mark.parametrize(
    "first, resumed, state",
    [
        (
            pyro.optim.Adam,
            {"lr": 0.05, "amsgrad": True},
            r"amsgrad=true \(the checkpoint's: not given\).*'max_exp_avg_sq'",
        ),
        (pyro.optim.RMSprop, {"lr": 0.05, "centered": True}, r"centered=true.*'grad_avg'"),
        (pyro.optim.RMSprop, {"lr": 0.05, "momentum": 0.9}, r"momentum=0\.9.*'momentum_buffer'"),
    ],
)
def test_resume_refuses_arguments_that_need_state_it_lacks(
    tmp_path, first, resumed, state, compile
):
    """Resumed with ``amsgrad=True`` on an Adam checkpoint written without it, fit logged
    that it applies the argument, then failed at the first step with KeyError
    'max_exp_avg_sq' (RMSprop's ``centered`` or ``momentum``: 'grad_avg',
    'momentum_buffer'). Torch keeps that state from a parameter's first step on, so the
    checkpoint cannot continue under the new argument: refused, naming both."""
    _fit(first({"lr": 0.05}), steps=2, checkpoint_dir=tmp_path, compile=compile)
    with pytest.raises(CheckpointError, match=state + r".*fresh directory"):
        _fit(first(resumed), steps=4, checkpoint_dir=tmp_path, compile=compile)
    _fit(first({"lr": 0.05}), steps=4, checkpoint_dir=tmp_path, compile=compile)  # resumes


def test_resume_takes_arguments_whose_state_torch_makes_when_missing(tmp_path):
    """SGD's momentum switched on at a resume: torch starts the momentum buffer from the
    next gradient when a parameter has none (so a fresh run does), and the resume is not
    refused; the step count goes on."""
    _fit(pyro.optim.SGD({"lr": 0.05}), steps=2, checkpoint_dir=tmp_path)
    optim = pyro.optim.SGD({"lr": 0.05, "momentum": 0.9})
    result = _fit(optim, steps=4, checkpoint_dir=tmp_path)
    assert result.step == 4
    assert all("momentum_buffer" in s for o in optim.optim_objs.values() for s in o.state.values())


def _rates(optim: pyro.optim.PyroOptim) -> list[float]:
    return [g["lr"] for o in optim.optim_objs.values() for g in o.param_groups]


def test_clipped_adam_resumed_with_another_rate_keeps_its_decay(tmp_path):
    """ClippedAdam decays its rate by ``lrd`` at every step. Resumed with another ``lr``, the
    rate jumped back to the new ``lr`` undecayed (0.2 where the checkpoint's schedule stood
    at 0.1 * 0.5**4): the new rate now goes on from where the decay stood, the rate a run
    started with it has at that step."""
    _fit(pyro.optim.ClippedAdam({"lr": 0.1, "lrd": 0.5}), steps=4, checkpoint_dir=tmp_path)
    resumed = pyro.optim.ClippedAdam({"lr": 0.2, "lrd": 0.5})
    _fit(resumed, steps=5, checkpoint_dir=tmp_path)
    fresh = pyro.optim.ClippedAdam({"lr": 0.2, "lrd": 0.5})
    _fit(fresh, steps=5)
    assert _rates(resumed) == _rates(fresh) == [0.2 * 0.5**5] * 2
