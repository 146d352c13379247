"""Checkpoints of users' float64 programs: a checkpointed run resumed equals the straight run
bit for bit and its file holds float64 tensors; a resume into a model of another dtype is
refused before touching the model (it was cast silently).

The two ways Pyro users get to double precision are both run: ``torch.set_default_dtype(
torch.float64)`` ("default"), or float32 defaults with float64 data and networks moved with
``.double()`` ("double"); float64_programs.py holds the programs and loops shared by the
test_float64_*.py files."""

from __future__ import annotations

import tempfile

import pyro
import pyro.optim
import pytest
import torch

from pyro_gen.infer import CheckpointError, fit
from pyro_gen.infer.checkpoint import load_checkpoint
from tests.user_programs.float64_programs import (
    PlainVAE,
    _data,
    _enter,
    _fit,
    _program,
    _regression_data,
    _restore_default_dtype,  # noqa: F401 - pytest fixtures, used by name
    _store,
    regression,
)


def _floating_tensors(tree, path: str = ""):
    if torch.is_tensor(tree):
        if tree.is_floating_point():
            yield path, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _floating_tensors(v, f"{path}/{k}")


@pytest.mark.parametrize(
    "mode,compile",
    [("default", False), ("double", False), ("default", None)],
    ids=["default-compile_false", "double-compile_false", "default-compiled"],
)
def test_checkpoint_resume_is_exact_in_float64(mode, compile, tmp_path):
    """One epoch, then a resume to two in a freshly built program equals two straight
    epochs bit for bit; the file holds the weights, params and Adam moments in float64."""
    _enter(mode)
    pyro.clear_param_store()
    model, guide, batches = _program("global", mode)
    pyro.set_rng_seed(1)
    straight_losses = _fit(model, guide, batches, 2, compile)
    straight = _store()

    pyro.clear_param_store()
    model, guide, batches = _program("global", mode)
    pyro.set_rng_seed(1)
    _fit(model, guide, batches, 1, compile, checkpoint_dir=tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    saved = dict(_floating_tensors({k: ckpt[k] for k in ("modules", "param_store", "optim")}))
    moments = [p for p in saved if p.endswith(("exp_avg", "exp_avg_sq"))]
    assert len(moments) == 2 * len(straight)
    wrong = {p: t.dtype for p, t in saved.items() if t.dtype != torch.float64}
    assert set(wrong) <= {p for p in saved if p.endswith("/step")}, wrong

    pyro.clear_param_store()
    model, guide, batches = _program("global", mode)  # as a new process builds it
    pyro.set_rng_seed(123)  # the checkpoint's RNG state replaces this
    resumed_losses = _fit(model, guide, batches, 2, compile, checkpoint_dir=tmp_path)
    resumed = _store()
    assert resumed_losses == straight_losses
    for name, value in straight.items():
        assert resumed[name].dtype == torch.float64
        assert torch.equal(resumed[name], value), name


@pytest.mark.parametrize("saved", [torch.float64, torch.float32], ids=["f64_saved", "f32_saved"])
@pytest.mark.parametrize("kind", ["module", "param"])
def test_resume_into_another_dtype_is_refused_before_touching_the_model(kind, saved):
    """A float64 checkpoint resumed where the model is float32 (a new process that forgot
    the set-up) went on in float32, the weights cast silently, and a float32 one in
    float64: neither is the run that wrote it. Refused, naming the dtypes and the fix."""
    other = torch.float32 if saved == torch.float64 else torch.float64

    def run(dtype, directory):
        torch.set_default_dtype(dtype)
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        if kind == "module":
            m = PlainVAE()
            model, guide, data = m.model, m.guide, _data().to(dtype)
        else:
            model, guide, data = regression, (lambda x, y: None), _regression_data(dtype)
        return fit(model, data, guide=guide, epochs=1, batch_size=8, compile=False,
                   progress=False, checkpoint_dir=directory)  # fmt: skip

    with tempfile.TemporaryDirectory() as directory:
        run(saved, directory)
        with pytest.raises(CheckpointError, match=f"{saved}.*{other}|{other}.*{saved}") as e:
            run(other, directory)
    assert "set_default_dtype" in str(e.value) and "fresh directory" in str(e.value)
    assert all(v.dtype == other for v in pyro.get_param_store().values())
