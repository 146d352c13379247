"""Exact resume where Inductor compiles the step (``compile=True``; on CUDA, after 500
steps): a resumed run takes each step on the path the uninterrupted run took
(:mod:`pyro_gen.infer.compiled_resume`).

Inductor's program rounds otherwise than Pyro's own step (1e-8 apart after one step of the
VAE below). Before the checkpoint kept the compiled step's record, a resumed run met each
input signature anew: Pyro's step where the uninterrupted run replayed its compiled
program, and the switch to Inductor later, so the two ended 1e-8 apart, not equal. One test
compiles with Inductor itself; the others use a stand-in compiler whose program rounds
otherwise than Pyro's step by far more (a factor ``1 + 2**-12`` on each gradient), as
Inductor's does by little, to reach the step counts where a later program compiles
(``compile_after``: 50 steps) without an Inductor compile per run.
"""

from __future__ import annotations

import io
import json

import pyro
import pytest
import torch

from pyro_gen.infer import CheckpointError, compiled_compiler, fit
from pyro_gen.infer.checkpoint import MAGIC, load_checkpoint, write_payload
from pyro_gen.infer.compiled import CompiledSVI
from tests.infer.tiny_vae import TinyVAE, binary_data


def _run(path, data, steps, *, seed=0, compile=True, **sizes) -> TinyVAE:
    pyro.set_rng_seed(seed)
    model = TinyVAE(**sizes)
    fit(model, data, batch_size=16, steps=steps, compile=compile, progress=False,
        checkpoint_dir=path, clear_params=True)  # fmt: skip
    return model


def _resumed(path, data, stop, steps, **kwargs) -> TinyVAE:
    """``steps`` steps in two runs, the second resumed after step ``stop`` (another seed:
    the checkpoint's RNG state must be what counts)."""
    _run(path, data, stop, **kwargs)
    return _run(path, data, steps, seed=7, **kwargs)


def _assert_same(a: TinyVAE, b: TinyVAE) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), f"{name}: {(x - y).abs().max().item():.3g} apart"


@pytest.fixture
def rounding_compiler(monkeypatch):
    """Stands in for Inductor: a program that rounds its gradients otherwise than Pyro's."""

    def compile_program(gm, backend, *args, **kwargs):
        if backend != "inductor":
            return real(gm, backend, *args, **kwargs)

        def run(*inputs):
            out = gm(*inputs)  # the loss and flags (0-dim) as they are
            return (out[0], *(o * (1 + 2**-12) if o.dim() else o for o in out[1:]))

        return run

    real = compiled_compiler.compile_program
    monkeypatch.setattr(compiled_compiler, "compile_program", compile_program)


def test_resume_under_inductor_is_bit_exact(tmp_path):
    """After step 1 the checkpoint has seen the batch shape once (the uninterrupted run
    records and compiles at step 2); after step 5 it has a compiled program. Resumed at
    either, the run replays the compiled program where the uninterrupted one did."""
    data, sizes = binary_data(x_dim=20), dict(x_dim=20, hidden=32)
    straight = _run(tmp_path / "a", data, 8, **sizes)
    for stop in (1, 5):
        _assert_same(straight, _resumed(tmp_path / f"b{stop}", data, stop, 8, **sizes))


def test_a_later_program_compiles_at_the_same_step(tmp_path, rounding_compiler):
    """40 examples in batches of 16: a full batch (compiled at once) and a last partial one
    of 8, whose program compiles after 50 of its steps, at step 156. Resumed after step 153
    (the partial program at 50 steps: compiled at its next), the run equals the
    uninterrupted one."""
    data = binary_data(n=40)
    straight = _run(tmp_path / "a", data, 158)
    _assert_same(straight, _resumed(tmp_path / "b", data, 153, 158))


def test_a_program_recorded_first_after_a_resume_waits_as_a_later_one(tmp_path, rounding_compiler):
    """Resumed after step 5, the first batch is the partial one, seen once before: its
    program is recorded first in the resumed run but second in the uninterrupted one, and
    so waits for its 50 steps, as a later program does, rather than compiling at once."""
    data = binary_data(n=40)
    _assert_same(_run(tmp_path / "a", data, 8), _resumed(tmp_path / "b", data, 5, 8))


def test_a_checkpoint_without_the_record_resumes_as_before(tmp_path):
    """A checkpoint written before the compiled step's record was kept resumes with
    programs started afresh: exactly, with the default compiled step on the CPU."""
    data = binary_data()
    straight = _run(tmp_path / "a", data, 8, compile=None)
    _run(tmp_path / "b", data, 4, compile=None)
    path = tmp_path / "b" / "checkpoint.pt"
    payload = _payload(path)
    assert payload.pop("compiled_step")["programs"]  # written now, with the program's count
    write_payload(path, payload)
    _assert_same(straight, _run(tmp_path / "b", data, 8, seed=7, compile=None))


def test_a_damaged_record_is_refused(tmp_path):
    _run(tmp_path, binary_data(), 2, compile=None)
    path = tmp_path / "checkpoint.pt"
    payload = _payload(path)
    payload["compiled_step"]["programs"] = {"x": ["2", True]}
    write_payload(path, payload)
    with pytest.raises(CheckpointError, match="compiled step's record is not a record"):
        load_checkpoint(path)


def test_a_run_that_fell_back_resumes_on_plain_pyro():
    """The record keeps a fallback to plain Pyro SVI: the resumed step takes plain steps
    at once, as the uninterrupted one does, not a recorded program until it falls back."""

    def model(x):
        loc = pyro.param("loc", torch.zeros(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", pyro.distributions.Normal(loc, 1.0), obs=x)

    first = CompiledSVI(model, lambda x: None, backend="fx")
    for n in (4, 4, 5, 5, 6):  # a third shape early on: shapes that vary, so it falls back
        first.step(torch.zeros(n))
    assert first.fallback_reason is not None
    resumed = CompiledSVI(model, lambda x: None, backend="fx")
    resumed.restore_compile_record(json.loads(json.dumps(first.compile_record())))
    resumed.step(torch.zeros(4))
    assert resumed.fallback_reason == first.fallback_reason and not resumed._programs


def _payload(path) -> dict:
    raw = path.read_bytes()
    data = raw[raw.index(b"\n", len(MAGIC)) + 1 :]
    return torch.load(io.BytesIO(data), weights_only=True)
