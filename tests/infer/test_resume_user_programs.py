"""Resuming a user's own Pyro program from fit's checkpoint_dir: refusals that name the change."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.nn import PyroModule, PyroParam

import pyro_gen
from pyro_gen.infer import CheckpointError, fit
from pyro_gen.infer.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from pyro_gen.runs import RunError

_positive = dist.constraints.positive


def _model(x: torch.Tensor) -> None:
    scale = pyro.param("scale", torch.ones(3), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(0.0, scale).to_event(1), obs=x)


def _fit(tmp_path, optim: pyro.optim.PyroOptim | None, epochs: int, model=_model) -> None:
    pyro.clear_param_store()
    fit(
        model,
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


def test_restore_refuses_a_param_the_checkpoint_lacks(tmp_path) -> None:
    """A model that gained a ``pyro.param`` since the checkpoint was written is refused when
    its traced param names are given (without them the new param trained from its initial
    value beside restored ones, silently); the module's own parameters are in its state."""
    net = torch.nn.Linear(3, 3)
    adam = pyro.optim.Adam({"lr": 0.01})
    pyro.clear_param_store()
    pyro.module("net", net)
    pyro.param("scale", torch.ones(3), constraint=dist.constraints.positive)
    save_checkpoint(tmp_path / "c.pt", modules={"net": net}, optim=adam)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    pyro.param("extra", torch.zeros(2))
    names = list(pyro.get_param_store().keys())
    restore_checkpoint(ckpt, modules={"net": net}, optim=adam, params=names[:-1])
    with pytest.raises(CheckpointError, match=r"params new in this model: \['extra'\]"):
        restore_checkpoint(ckpt, modules={"net": net}, optim=adam, params=names)


def test_resume_with_a_tensor_bounded_constraint(tmp_path) -> None:
    """A ``pyro.param`` with per-element bounds (``greater_than(tensor)``) resumes; the
    comparison of its constraint raised 'Boolean value of Tensor with more than one value is
    ambiguous'. Other bounds are refused as another constraint."""

    def model_with(bound: torch.Tensor):
        def model(x: torch.Tensor) -> None:
            constraint = dist.constraints.greater_than(bound)
            scale = pyro.param("scale", bound + 1.0, constraint=constraint)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(0.0, scale).to_event(1), obs=x)

        return model

    def run(bound: torch.Tensor, epochs: int) -> None:
        _fit(tmp_path, None, epochs, model=model_with(bound))

    run(torch.zeros(3), epochs=1)
    run(torch.zeros(3), epochs=2)
    with pytest.raises(CheckpointError, match="param 'scale' is constrained to"):
        run(torch.tensor([0.0, 0.0, 0.5]), epochs=3)


def _with_shift(x: torch.Tensor) -> None:
    scale = pyro.param("scale", torch.ones(3), constraint=dist.constraints.positive)
    shift = pyro.param("shift", torch.zeros(3))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(shift, scale).to_event(1), obs=x)


def test_resume_refuses_a_model_that_gained_or_lost_a_param(tmp_path) -> None:
    """fit passes the warm-up's param names to the restore: a model that gained
    ``pyro.param("shift")`` resumed silently, training it from zero beside the restored
    scale, and one that lost it resumed a model that is no longer the checkpoint's."""
    _fit(tmp_path / "a", None, epochs=1)
    with pytest.raises(CheckpointError, match=r"new in this model: \['shift'\].*fresh"):
        _fit(tmp_path / "a", None, epochs=2, model=_with_shift)
    _fit(tmp_path / "b", None, epochs=1, model=_with_shift)
    with pytest.raises(CheckpointError, match=r"gone from this model: \['shift'\]"):
        _fit(tmp_path / "b", None, epochs=2)
    _fit(tmp_path / "b", None, epochs=2, model=_with_shift)  # the same model resumes


def test_load_of_a_fit_directory_says_how_to_restore_it(tmp_path) -> None:
    """``pyro_gen.load`` on a ``fit(checkpoint_dir=)`` directory said only that it is not a
    pyro-gen run directory; it now says that it holds fit's checkpoint and which call
    restores it, and that call (followed here) gives back the trained param."""
    _fit(tmp_path, pyro.optim.Adam({"lr": 0.1}), epochs=2)
    trained = pyro.param("scale").detach().clone()
    with pytest.raises(RunError, match=r"no config.json.*fit\(model, data, guide=.*steps=0"):
        pyro_gen.load(str(tmp_path))
    pyro.clear_param_store()
    x = torch.randn(8, 3)
    fit(_model, x, guide=lambda x: None, checkpoint_dir=tmp_path, steps=0, batch_size=4)
    assert torch.equal(pyro.param("scale").detach(), trained)


def test_a_refused_resume_leaves_the_model_as_it_was(tmp_path) -> None:
    """A resume refused for another optimizer or a param of another shape had already
    copied the checkpoint's network weights (and params) into the model, so the fresh run
    the message advises started from the checkpoint's values instead of the user's."""
    net = torch.nn.Linear(3, 3)

    def model_with(scale_shape: tuple[int, ...]):
        def model(x: torch.Tensor) -> None:
            pyro.module("net", net)
            scale = pyro.param("scale", torch.ones(scale_shape), constraint=_positive)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(net(x), scale).to_event(1), obs=x)

        return model

    _fit(tmp_path, pyro.optim.Adam({"lr": 0.1}), epochs=1, model=model_with((3,)))
    for optim, shape, refusal in [
        (pyro.optim.SGD({"lr": 0.1}), (3,), "optimizer Adam but this run passes SGD"),
        (pyro.optim.Adam({"lr": 0.1}), (1,), r"'scale' has shape \(1,\) here but \(3,\)"),
    ]:
        with torch.no_grad():
            net.weight.fill_(7.0)  # the user's own initial values
        with pytest.raises(CheckpointError, match=refusal):
            _fit(tmp_path, optim, epochs=2, model=model_with(shape))
        assert bool((net.weight == 7.0).all())
        assert torch.equal(pyro.param("scale").detach(), torch.ones(shape))


def test_resume_with_another_autoguide_names_the_params_of_both(tmp_path) -> None:
    """``guide=AutoDelta(model)`` on a checkpoint of ``AutoNormal(model)`` named only the
    AutoNormal params as gone: AutoDelta's own (a module's parameters) are new as well."""

    def model(x: torch.Tensor) -> None:
        z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def run(guide, epochs: int) -> None:
        pyro.clear_param_store()
        x = torch.randn(8, 3)
        fit(
            model,
            x,
            guide=guide,
            epochs=epochs,
            batch_size=4,
            checkpoint_dir=tmp_path,
            progress=False,
        )

    run(AutoNormal(model), epochs=1)
    expected = r"new in this model: \['AutoDelta.z'\]; gone from this model: \['AutoNormal"
    with pytest.raises(CheckpointError, match=expected):
        run(AutoDelta(model), epochs=2)
    run(AutoNormal(model, init_scale=0.5), epochs=2)  # the same params: resumes


def test_resume_applies_the_optimizer_arguments_it_is_given(tmp_path) -> None:
    """Resumed with ``Adam({"lr": 0.001, "betas": (0.5, 0.6)})`` on a checkpoint trained
    with lr 0.1, Pyro's restored optimizer state put lr 0.1 and the default betas back, so
    the arguments given (a per-parameter function's too, and ``pyro-gen train --override
    lr``) were silently ignored. They now apply, with Adam's moments and step count
    continued; a scheduler's arguments, whose saved state sets the learning rate, are
    refused when they change."""
    _fit(tmp_path, pyro.optim.Adam({"lr": 0.1}), epochs=1)  # 2 steps of 4 examples
    optim = pyro.optim.Adam({"lr": 0.001, "betas": (0.5, 0.6)})
    _fit(tmp_path, optim, epochs=2)
    (adam,) = optim.optim_objs.values()
    assert [(g["lr"], tuple(g["betas"])) for g in adam.param_groups] == [(0.001, (0.5, 0.6))]
    assert [int(s["step"]) for s in adam.state.values()] == [4]
    # per-parameter arguments, as Pyro's tutorials give them, are compared param by param
    per_param = pyro.optim.Adam(lambda name: {"lr": 0.01 if name == "scale" else 1.0})
    _fit(tmp_path, per_param, epochs=3)
    (adam,) = per_param.optim_objs.values()
    assert [(g["lr"], tuple(g["betas"])) for g in adam.param_groups] == [(0.01, (0.9, 0.999))]

    def scheduler(gamma: float) -> pyro.optim.PyroLRScheduler:
        args = {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, "gamma": gamma}
        return pyro.optim.ExponentialLR(args)

    _fit(tmp_path / "s", scheduler(0.9), epochs=1)
    with pytest.raises(CheckpointError, match=r"gamma=0.5 \(the checkpoint's: 0.9\)"):
        _fit(tmp_path / "s", scheduler(0.5), epochs=2)
    _fit(tmp_path / "s", scheduler(0.9), epochs=2)


def test_resume_refuses_a_pyro_module_param_with_another_constraint(tmp_path) -> None:
    """A ``PyroModule``'s ``PyroParam`` is the module's own tensor, so the checkpoint kept
    its unconstrained value in the module's state and not its constraint: resumed with
    ``interval(0, 10)`` instead of ``positive``, the trained scale 1.6 read back as 6.2
    through the other transform, silently."""

    class Scaled(PyroModule):
        def __init__(self, constraint: dist.constraints.Constraint) -> None:
            super().__init__()
            self.sigma = PyroParam(torch.tensor(1.0), constraint=constraint)

        def forward(self, x: torch.Tensor) -> None:
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Normal(0.0, self.sigma), obs=x)

    def run(constraint: dist.constraints.Constraint, epochs: int) -> None:
        pyro.clear_param_store()
        x, model = torch.randn(8), Scaled(constraint)
        fit(model, x, guide=lambda x: None, epochs=epochs, checkpoint_dir=tmp_path, progress=False)

    run(_positive, epochs=1)
    with pytest.raises(CheckpointError, match="param 'sigma' is constrained to Interval"):
        run(dist.constraints.interval(0.0, 10.0), epochs=2)
    run(_positive, epochs=2)
