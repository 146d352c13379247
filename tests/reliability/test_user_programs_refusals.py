"""Checkpoints of a user's own Pyro program that ``fit`` must refuse, with one clear error
and nothing restored, overwritten or executed: the model or guide changed since (a renamed
or reshaped ``pyro.param``, another autoguide), a corrupt, truncated or crafted file (a
pickle whose unpickling would create a marker file), and state no checkpoint can hold (a
constraint class of the user's own), which is refused before any training.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import pickle
import re
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch.distributions import transform_to
from torch.distributions import transforms as T

from pyro_gen.infer import CheckpointError, fit
from pyro_gen.infer.checkpoint import MAGIC

# the data plates here have the batch's size (the posterior is not the point)
pytestmark = pytest.mark.filterwarnings("ignore::pyro_gen.infer.batch_checks.UnscaledBatchWarning")

X = torch.randn(16, 3)  # 4 batches of 4 an epoch


def program(name: str = "scale", shape: int = 3, guide_name: str = "q_mean"):
    def model(x: torch.Tensor) -> None:
        scale = pyro.param(name, torch.ones(shape), constraint=constraints.positive)
        loc = pyro.sample("loc", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, scale.sum()).to_event(1), obs=x)

    def guide(x: torch.Tensor) -> None:
        pyro.sample("loc", dist.Normal(pyro.param(guide_name, torch.zeros(3)), 1.0).to_event(1))

    return model, guide


def train(run: Path, model: Any, guide: Any, steps: int) -> None:
    pyro.clear_param_store()
    fit(model, X, guide=guide, batch_size=4, steps=steps, optim=pyro.optim.Adam({"lr": 0.01}),
        progress=False, compile=False, checkpoint_dir=run)  # fmt: skip


def store() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def assert_refused(run: Path, model: Any, guide: Any, *expected: str) -> None:
    """``fit`` refuses the checkpoint before a step: the file keeps its bytes and the
    param store holds the new program's initial values, not half of the checkpoint's."""
    before = (run / "checkpoint.pt").read_bytes()
    pyro.clear_param_store()
    fit(model, X, guide=guide, batch_size=4, steps=0, progress=False, compile=False)
    initial = store()
    with pytest.raises(CheckpointError) as info:
        train(run, model, guide, steps=8)
    message = str(info.value)
    assert "\n" not in message
    for text in expected:
        assert re.search(text, message), message
    assert (run / "checkpoint.pt").read_bytes() == before
    now = store()
    assert now.keys() == initial.keys()
    for name in now:
        assert torch.equal(now[name], initial[name]), name


@pytest.mark.parametrize("steps", [2, 4], ids=["mid_epoch", "epoch_end"])
@pytest.mark.parametrize(
    "change, expected",
    [
        ({"name": "scale2"}, [r"new in this model: \['scale2'\]", r"gone from .*\['scale'\]"]),
        ({"shape": 4}, [r"param 'scale' has shape \(4,\) here but \(3,\)"]),
        ({"guide_name": "q_loc"}, [r"new in this model: \['q_loc'\]", r"\['q_mean'\]"]),
    ],
    ids=["renamed", "reshaped", "guide_param_renamed"],
)
def test_a_changed_plain_function_program_is_refused(tmp_path, steps, change, expected):
    train(tmp_path, *program(), steps=steps)
    assert_refused(tmp_path, *program(**change), *expected)


class Regression(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.loc = PyroSample(dist.Normal(0.0, 1.0).expand([3]).to_event(1))

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(self.loc, 1.0).to_event(1), obs=x)


def test_another_autoguide_is_refused_naming_both(tmp_path):
    regression = Regression()
    train(tmp_path, regression, AutoNormal(regression), steps=2)
    regression = Regression()
    assert_refused(
        tmp_path,
        regression,
        AutoDelta(regression),
        r"new in this model: \['AutoDelta.loc'\]",
        r"gone from this model: \['AutoNormal.locs.loc', 'AutoNormal.scales.loc'\]",
    )


class _Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return builtins.open, (self.marker, "w")


def crafted(kind: str, marker: Path) -> bytes:
    if kind == "pickle":
        return pickle.dumps(_Payload(str(marker)))
    buffer = io.BytesIO()
    torch.save({"format": 2, "payload": _Payload(str(marker))}, buffer)
    data = buffer.getvalue()
    if kind == "torch_zip":
        return data
    # our own header with a correct checksum: an attacker can compute one too
    header = {"format": 2, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return MAGIC + json.dumps(header).encode() + b"\n" + data


def test_the_crafted_payloads_are_live(tmp_path):
    # Without this, "the marker never appears" could hold for payloads that do nothing.
    marker = tmp_path / "marker"
    pickle.loads(crafted("pickle", marker))
    assert marker.exists()
    marker.unlink()
    torch.load(io.BytesIO(crafted("torch_zip", marker)), weights_only=False)
    assert marker.exists()


def damaged(kind: str, good: bytes, marker: Path) -> bytes:
    if kind == "flipped":
        i = len(good) - 200  # inside the tensor data
        return good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :]
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "empty":
        return b""
    return crafted(kind, marker)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("flipped", "damaged .*SHA-256"),
        ("truncated", "truncated"),
        ("empty", "checkpoint.pt is empty"),
        ("pickle", "not loaded, because unpickling such a file can run code"),
        ("torch_zip", "not loaded, because unpickling such a file can run code"),
        ("checksummed", "not loaded"),
    ],
)
def test_a_damaged_or_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, kind, expected):
    run, marker = tmp_path / "run", tmp_path / "marker"
    model, guide = program()
    train(run, model, guide, steps=2)
    (run / "checkpoint.pt").write_bytes(damaged(kind, (run / "checkpoint.pt").read_bytes(), marker))
    assert_refused(run, model, guide, "checkpoint.pt", expected)
    assert not marker.exists()
    assert sorted(p.name for p in run.iterdir()) == [".pyro-gen.lock", "checkpoint.pt",
                                                       "metrics.jsonl"]  # fmt: skip


class AtLeastThree(constraints.Constraint):
    """A user's own constraint class, as Pyro allows (``transform_to`` registered)."""

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return value >= 3


@transform_to.register(AtLeastThree)
def _at_least_three(constraint: AtLeastThree) -> T.Transform:
    return T.ComposeTransform([T.ExpTransform(), T.AffineTransform(3.0, 1.0)])


def test_a_constraint_no_checkpoint_can_record_is_refused_before_training(tmp_path):
    """A ``pyro.param`` with the user's own constraint class trained a whole epoch (or the
    ``checkpoint_every`` steps) and then failed writing the first checkpoint; it is refused
    before the first step, naming the param, and trains without ``checkpoint_dir``."""

    def model(x: torch.Tensor) -> None:
        shift = pyro.param("shift", torch.full((3,), 4.0), constraint=AtLeastThree())
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(shift - 4.0, 1.0).to_event(1), obs=x)

    steps = []
    for compile in (False, None):
        pyro.clear_param_store()
        with pytest.raises(CheckpointError) as info:
            fit(model, X, guide=lambda x: None, batch_size=4, epochs=2, progress=False,
                compile=compile, checkpoint_dir=tmp_path,
                step_callbacks=[lambda step, m: steps.append(step)])  # fmt: skip
        message = str(info.value)
        assert "'shift'" in message and "AtLeastThree" in message, message
        assert "Nothing was trained" in message and "checkpoint_dir" in message, message
        assert steps == []
        assert torch.equal(pyro.param("shift").detach(), torch.full((3,), 4.0))
        assert not (tmp_path / "checkpoint.pt").exists()
    fit(model, X, guide=lambda x: None, batch_size=4, epochs=1, progress=False, compile=False,
        step_callbacks=[lambda step, m: steps.append(step)])  # fmt: skip
    assert steps == [1, 2, 3, 4]
