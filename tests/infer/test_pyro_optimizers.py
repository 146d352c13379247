"""``fit`` with every Pyro optimizer and learning-rate scheduler a user might pass as
``optim=``, each against Pyro's own ``SVI`` loop over the same batches and seed.

- ``compile=False`` is Pyro's step: epoch losses, parameters and learning rates equal
  ``SVI(model, guide, optim, Trace_ELBO())`` stepped by hand, with the scheduler stepped
  per epoch (``callbacks=``, as fit's docstring says) or per step (``step_callbacks=``,
  marked with ``changes_only_tensors`` or not);
- the compiled step (fused Adam/AdamW included) equals it to float rounding;
- a checkpoint at ``steps=k`` resumed to ``steps=n`` equals one run of ``n`` bit for bit,
  optimizer and scheduler state included;
- one optimizer shared by ``fit`` and a plain SVI loop, taking turns, follows SVI alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch.distributions import constraints

from pyro_gen.infer import changes_only_tensors, fit

EXAMPLES = 8  # per batch; 3 batches an epoch
BATCHES = 3


def _sgd_scheduler(cls: Any, **kwargs: Any) -> Callable[[], pyro.optim.PyroLRScheduler]:
    # A fresh dict per call: PyroLRScheduler pops "optimizer" and "optim_args" out of it.
    return lambda: cls(
        {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.02, "momentum": 0.5}, **kwargs}
    )


def _per_param(module_name: str, param_name: str) -> dict[str, Any]:
    # Pyro's tutorials' per-parameter form: the network's biases and the guide's params
    # get other rates and weight decays than the network's weights.
    if module_name == "dec":
        return {"lr": 0.1 if param_name == "bias" else 0.02, "weight_decay": 0.05}
    return {"lr": 0.05}


OPTIMIZERS: dict[str, Callable[[], pyro.optim.PyroOptim]] = {
    "Adam": lambda: pyro.optim.Adam({"lr": 0.05}),
    "Adam-weight-decay-amsgrad": lambda: pyro.optim.Adam(
        {"lr": 0.05, "weight_decay": 0.1, "betas": (0.8, 0.95), "amsgrad": True}
    ),
    "Adam-clip-args": lambda: pyro.optim.Adam({"lr": 0.05}, {"clip_norm": 0.5}),
    "AdamW": lambda: pyro.optim.AdamW({"lr": 0.05, "weight_decay": 0.1}),
    "Adam-per-param": lambda: pyro.optim.Adam(_per_param),
    "Adam-per-param-name": lambda: pyro.optim.Adam(
        lambda name: {"lr": 0.1 if name.endswith("bias") else 0.02}
    ),
    "ClippedAdam": lambda: pyro.optim.ClippedAdam({"lr": 0.05, "clip_norm": 0.5, "lrd": 0.9}),
    "DCTAdam": lambda: pyro.optim.DCTAdam({"lr": 0.05}),
    "SGD-nesterov": lambda: pyro.optim.SGD({"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    "SGD-momentum-dampening": lambda: pyro.optim.SGD(
        {"lr": 0.01, "momentum": 0.9, "dampening": 0.1}
    ),
    # torch optimizers through PyroOptim: one Pyro has no wrapper for, and Adam with
    # per-parameter arguments and per-parameter clipping, both as functions
    "PyroOptim-Rprop": lambda: pyro.optim.PyroOptim(torch.optim.Rprop, {"lr": 0.01}),
    "PyroOptim-Adam-per-param-clip": lambda: pyro.optim.PyroOptim(
        torch.optim.Adam, _per_param, lambda module_name, param_name: {"clip_value": 0.1}
    ),
    "RMSprop": lambda: pyro.optim.RMSprop({"lr": 0.01}),
    "Adagrad": lambda: pyro.optim.Adagrad({"lr": 0.1}),
    "AdagradRMSProp": lambda: pyro.optim.AdagradRMSProp({"eta": 0.1}),
    "Adadelta": lambda: pyro.optim.Adadelta({"lr": 1.0}),
    "Adamax": lambda: pyro.optim.Adamax({"lr": 0.05}),
    "NAdam": lambda: pyro.optim.NAdam({"lr": 0.05}),
    "RAdam": lambda: pyro.optim.RAdam({"lr": 0.05}),
}

# Each changes the rate within 2 epoch steps and within 8 per-step steps.
SCHEDULERS: dict[str, Callable[[], pyro.optim.PyroLRScheduler]] = {
    "ExponentialLR": _sgd_scheduler(pyro.optim.ExponentialLR, gamma=0.5),
    "ExponentialLR-Adam": lambda: pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "gamma": 0.5}
    ),
    "ExponentialLR-per-param": lambda: pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": _per_param, "gamma": 0.5}
    ),
    "StepLR": _sgd_scheduler(pyro.optim.StepLR, step_size=1, gamma=0.5),
    "MultiStepLR": _sgd_scheduler(pyro.optim.MultiStepLR, milestones=[1, 2, 2, 5], gamma=0.5),
    "CosineAnnealingLR": _sgd_scheduler(pyro.optim.CosineAnnealingLR, T_max=5),
    "OneCycleLR": _sgd_scheduler(pyro.optim.OneCycleLR, max_lr=0.05, total_steps=12),
    "LambdaLR": _sgd_scheduler(pyro.optim.LambdaLR, lr_lambda=lambda k: 1.0 / (1 + k)),
    # needs scheduler.step(metric); a threshold that a small loss change cannot meet
    "ReduceLROnPlateau": _sgd_scheduler(
        pyro.optim.ReduceLROnPlateau, patience=0, factor=0.5, threshold=10.0
    ),
}

# (optimizer, how its scheduler is stepped: None, "epoch" or "step")
CASES = [(name, None) for name in OPTIMIZERS] + [
    (name, per)
    for name in SCHEDULERS
    for per in ("epoch", "step")
    if not (name == "ReduceLROnPlateau" and per == "step")  # step callbacks see no loss
]


def _make(name: str) -> pyro.optim.PyroOptim:
    return {**OPTIMIZERS, **SCHEDULERS}[name]()


def _pair() -> tuple[torch.nn.Module, Callable[..., None], Callable[..., None]]:
    """A tiny VAE-like pair: a network registered with pyro.module and constrained guide
    params in the store, so optimizers see modules, plain params and a constraint."""
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)

    def model(x: torch.Tensor) -> None:
        pyro.module("dec", net)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(net(z), 1.0).to_event(1), obs=x)

    def guide(x: torch.Tensor) -> None:
        loc = pyro.param("q_loc", torch.zeros(2))
        scale = pyro.param("q_scale", torch.ones(2), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).expand([x.shape[0], 2]).to_event(1))

    return net, model, guide


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(EXAMPLES, 2, generator=g) * 2 + 1 for _ in range(BATCHES)]


def _params() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _rates(optim: pyro.optim.PyroOptim) -> dict[str, list[float]]:
    """The learning rate of each parameter's torch optimizer (AdagradRMSProp's ``eta``),
    through ``get_state`` so that fit's fused stand-ins report as Pyro's own do."""
    rates = {}
    for name, state in optim.get_state().items():
        groups = (
            state["optimizer"]["param_groups"] if "scheduler" in state else state["param_groups"]
        )
        rates[name] = [float(g["lr"] if "lr" in g else g["eta"]) for g in groups]
    return rates


def _step_scheduler(optim: pyro.optim.PyroOptim, metric: float) -> None:
    if isinstance(optim, pyro.optim.PyroLRScheduler):
        if optim.pt_scheduler_constructor is torch.optim.lr_scheduler.ReduceLROnPlateau:
            optim.step(metric)
        else:
            optim.step()


def _svi(
    name: str, per: str | None, steps: int, optim: pyro.optim.PyroOptim | None = None
) -> tuple[list[float], dict, dict]:
    """Pyro's loop: epoch losses per example, params and rates after ``steps`` steps."""
    pyro.clear_param_store()
    _, model, guide = _pair()
    data = _batches()
    optim = optim if optim is not None else _make(name)
    svi = SVI(model, guide, optim, Trace_ELBO())
    pyro.set_rng_seed(0)
    epoch: list[float] = []
    losses = []
    for i in range(steps):
        epoch.append(svi.step(data[i % BATCHES]))
        if per in ("step", "step-marked"):
            _step_scheduler(optim, epoch[-1])
        if len(epoch) == BATCHES or i == steps - 1:
            losses.append(math.fsum(epoch) / (EXAMPLES * len(epoch)))
            if per == "epoch" and len(epoch) == BATCHES:
                _step_scheduler(optim, losses[-1])
            epoch = []
    return losses, _params(), _rates(optim)


def _fit(
    name: str,
    per: str | None,
    steps: int,
    *,
    compile: bool | None = False,
    checkpoint_dir: Path | None = None,
    optim: pyro.optim.PyroOptim | None = None,
) -> tuple[list[float], dict, dict]:
    """``fit`` as a new user calls it, stepping the scheduler where fit's docstring says."""
    pyro.clear_param_store()
    _, model, guide = _pair()
    optim = optim if optim is not None else _make(name)
    pyro.set_rng_seed(0)
    callbacks, step_callbacks = [], []
    if per == "epoch":
        callbacks = [lambda record, module: _step_scheduler(optim, record["train_loss"])]
    elif per == "step":
        step_callbacks = [lambda step, module: optim.step()]
    elif per == "step-marked":  # as callbacks.py says a rate change may be marked
        step_callbacks = [changes_only_tensors(lambda step, module: optim.step())]
    result = fit(
        model,
        _batches(),
        guide=guide,
        optim=optim,
        steps=steps,
        compile=compile,
        checkpoint_dir=checkpoint_dir,
        callbacks=callbacks,
        step_callbacks=step_callbacks,
        progress=False,
    )
    return [r["train_loss"] for r in result.history], _params(), _rates(optim)


def _assert_params(got: dict, want: dict, exact: bool) -> None:
    assert got.keys() == want.keys()
    for k in want:
        if exact:
            assert torch.equal(got[k], want[k]), k
        else:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("name, per", CASES)
def test_fit_takes_pyro_svi_steps(name, per):
    """compile=False: the same epoch losses (float32 losses summed), the same parameters
    bit for bit and the same learning rates after the scheduler's steps as Pyro's loop."""
    steps = 6  # two epochs: two epoch steps of a scheduler, six per-step ones
    want_losses, want_params, want_rates = _svi(name, per, steps)
    losses, params, rates = _fit(name, per, steps)
    assert losses == pytest.approx(want_losses, rel=1e-6)
    _assert_params(params, want_params, exact=True)
    assert rates == want_rates
    if per is not None:  # the schedule moved: a scheduler never stepped would fail above
        assert rates != _svi(name, None, steps)[2]


# The compiled step records its program once per fit (about a second): Adam and AdamW,
# which it fuses into one kernel (weight decay, amsgrad), Adam with per-parameter
# arguments, an optimizer it steps through Pyro, and a scheduler stepped every step.
COMPILED = [
    ("Adam-weight-decay-amsgrad", None),
    ("AdamW", None),
    ("Adam-per-param", None),
    ("SGD-nesterov", None),
    ("ExponentialLR-Adam", "step"),
    ("ExponentialLR", "step-marked"),  # the recorded step is not checked after it
]


@pytest.mark.parametrize("name, per", COMPILED)
def test_compiled_fit_follows_pyro_svi(name, per):
    """compile left at its default: Pyro's trajectory up to float rounding (the fused
    update sums in another order), the same learning rates, and optimizer state that
    Pyro's ``get_state`` reads in Pyro's own layout (fit's fused stand-ins included)."""
    reference, compiled = _make(name), _make(name)
    want_losses, want_params, want_rates = _svi(name, per, 6, optim=reference)
    want_state = reference.get_state()  # before the next run clears the param store
    losses, params, rates = _fit(name, per, 6, compile=None, optim=compiled)
    assert losses == pytest.approx(want_losses, rel=1e-6)
    _assert_params(params, want_params, exact=False)
    assert rates.keys() == want_rates.keys()
    for k in want_rates:
        assert rates[k] == pytest.approx(want_rates[k], rel=1e-12)
    _assert_state_close(compiled.get_state(), want_state)


def _assert_state_close(got: Any, want: Any, where: str = "state") -> None:
    """Same containers, keys and types; tensors equal up to float rounding."""
    assert type(got) is type(want), where
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            _assert_state_close(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_state_close(g, w, f"{where}[{i}]")
    elif torch.is_tensor(want):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=where)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-12), where
    else:
        assert got == want, where


@pytest.mark.parametrize(
    "name, per, compile",
    [(name, per, False) for name, per in CASES]
    + [
        (name, per, None)  # the compiled step: fused AdamW, a Pyro optimizer, schedulers
        for name, per in [
            ("AdamW", None),
            ("ClippedAdam", None),
            ("ExponentialLR-Adam", "step"),
            ("ReduceLROnPlateau", "epoch"),
        ]
    ],
)
def test_resume_equals_one_run(tmp_path, name, per, compile):
    """steps=4 into a checkpoint (inside the second epoch), then a fresh optimizer resumed
    to steps=8: the parameters, the optimizer's and scheduler's state (types included),
    the rates and the losses of one run of 8, bit for bit. (Compiled, the first step after
    the resume is Pyro's own, before the program is recorded again: its loss may differ
    from the recorded program's in the last float32 bit, not its update.)"""
    straight = _make(name)
    want_losses, want_params, want_rates = _fit(name, per, 8, compile=compile, optim=straight)
    want_state = _typed(straight.get_state())  # before the next run clears the param store
    first, _, _ = _fit(name, per, 4, compile=compile, checkpoint_dir=tmp_path)
    resumed = _make(name)
    losses, params, rates = _fit(
        name, per, 8, compile=compile, checkpoint_dir=tmp_path, optim=resumed
    )
    _assert_params(params, want_params, exact=True)
    assert _typed(resumed.get_state()) == want_state
    assert rates == want_rates
    assert first[0] == want_losses[0]
    assert losses == (want_losses if compile is False else pytest.approx(want_losses, rel=1e-6))


@pytest.mark.parametrize(
    "name, compile, fit_first",
    [
        ("AdamW", None, True),  # fit's fused stand-in, stepped by Pyro's SVI in between
        ("AdamW", None, False),  # the fused optimizer takes over the state SVI made
        ("Adam-weight-decay-amsgrad", False, True),
        ("ClippedAdam", False, True),
        ("SGD-nesterov", False, False),
        ("ExponentialLR", False, True),
    ],
)
def test_optimizer_shared_with_pyro_svi(name, compile, fit_first):
    """fit and Pyro's SVI take turns with one optimizer (and its scheduler, stepped between
    rounds): the trajectory of SVI alone, bit for bit where fit takes Pyro's step."""

    def rounds(use_fit: bool) -> tuple[dict, dict]:
        pyro.clear_param_store()
        _, model, guide = _pair()
        data, optim = _batches(), _make(name)
        svi = SVI(model, guide, optim, Trace_ELBO())
        pyro.set_rng_seed(0)
        for _ in range(2):
            if not fit_first:
                svi.step(data[0])
            if use_fit:
                fit(model, data, guide=guide, optim=optim, steps=3, compile=compile, progress=False)
            else:
                for x in data:
                    svi.step(x)
            if fit_first:
                svi.step(data[0])
            _step_scheduler(optim, 0.0)
        return _params(), _rates(optim)

    want_params, want_rates = rounds(use_fit=False)
    params, rates = rounds(use_fit=True)
    _assert_params(params, want_params, exact=compile is False)
    assert rates == want_rates


def _typed(value: Any) -> Any:
    """``value`` with the type of every container and number kept, for ``==``: a Counter
    equals the dict of its counts, but MultiStepLR's closed form calls ``.elements()``."""
    if isinstance(value, dict):
        return (type(value), {k: _typed(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return (type(value), [_typed(v) for v in value])
    if torch.is_tensor(value):
        return (type(value), value.dtype, value.tolist())
    return (type(value), value)


def test_resumed_multistep_scheduler_takes_an_epoch(tmp_path):
    """MultiStepLR's milestones (a Counter) came back from a checkpoint as a plain dict, so
    its closed form, ``scheduler.step(epoch)``, failed with AttributeError after a resume;
    it now sets the rates the uninterrupted run's scheduler sets."""
    name = "MultiStepLR"

    def rates_at_epoch(optim: pyro.optim.PyroLRScheduler) -> dict:
        with pytest.warns(UserWarning, match="epoch"):  # torch's deprecation of step(epoch)
            optim.step(5)
        return _rates(optim)

    straight = _make(name)
    _fit(name, "epoch", 8, optim=straight)
    want = rates_at_epoch(straight)  # before the next run clears the param store
    _fit(name, "epoch", 4, checkpoint_dir=tmp_path)
    resumed = _make(name)
    _fit(name, "epoch", 8, checkpoint_dir=tmp_path, optim=resumed)
    assert rates_at_epoch(resumed) == want


def _torch_sgd() -> torch.optim.SGD:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


@pytest.mark.parametrize(
    "make_optim, names",
    [
        (lambda: torch.optim.Adam, r"the class torch\.optim\.Adam: pass pyro\.optim\.Adam\("),
        (lambda: torch.optim.Adam(_torch_sgd().param_groups[0]["params"]), r"pyro\.optim\.Adam\("),
        (
            lambda: torch.optim.lr_scheduler.ExponentialLR(_torch_sgd(), 0.9),
            r"torch ExponentialLR: pass pyro\.optim\.ExponentialLR\(\{'optimizer'",
        ),
        (
            lambda: torch.optim.lr_scheduler.ReduceLROnPlateau(_torch_sgd()),
            r"pass pyro\.optim\.ReduceLROnPlateau\(",
        ),
        (lambda: pyro.optim.ClippedAdam, r"pyro\.optim\.ClippedAdam not called"),
        (lambda: pyro.optim.OneCycleLR, r"pyro\.optim\.OneCycleLR not called: .*'optimizer'"),
    ],
)
def test_torch_optimizer_is_refused_naming_pyros_wrapper(make_optim, names):
    """A torch optimizer or scheduler, or Pyro's wrapper not called, was refused as "got
    Adam" / "got function": the error now says which pyro.optim wrapper to pass."""
    _, model, guide = _pair()
    with pytest.raises(TypeError, match=names):
        fit(model, _batches(), guide=guide, optim=make_optim(), steps=1, progress=False)
