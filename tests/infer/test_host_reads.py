"""The compiled step reads nothing back to the host between the loss read-backs of ``fit``.

A read of a tensor's value (``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``, ...)
waits for the device: on CUDA it is a synchronization that stalls the step and breaks CUDA
graphs. The CPU cannot show the stall, so the reads are counted: every op through which
Python reads a value is seen by a dispatch mode, and the methods that read without
dispatching are patched. The program computes the guard's flag and the input checks'; the
accelerator path (the fused update reads the flag on the device) is forced on the CPU with
``_flag_on_device``; the CPU path reads exactly one flag per step by design
(benchmarks/RESULTS.md, step guard).

Bad input is still refused: on the CPU at once, by the model's own error; on the
accelerator path the batch's update is skipped on the device and :meth:`CompiledSVI.check`
raises the model's error for it.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.utils._python_dispatch import TorchDispatchMode

from pyro_gen.diffusion import build_ddpm
from pyro_gen.flows import build as build_flow
from pyro_gen.infer.callbacks import changes_only_tensors
from pyro_gen.infer.compiled import CompiledSVI, InputCheckError
from pyro_gen.infer.compiled_checks import probe_input_checks
from pyro_gen.vae import build_vae

fit_module = importlib.import_module("pyro_gen.infer.fit")  # the module, not the function
fit_step = importlib.import_module("pyro_gen.infer.fit_step")  # where fit reads CompiledSVI
aten = torch.ops.aten
# Ops that hand a tensor's value to Python, and so wait for the device.
_READ_OPS = {
    aten._local_scalar_dense.default,
    aten.item.default,
    aten.equal.default,
    aten.allclose.default,
}
# Methods that copy values to the host without passing through the dispatcher.
_READ_METHODS = ("tolist", "numpy", "__array__")


class HostReads(TorchDispatchMode):
    """Counts host reads while open; ``where`` says where each came from."""

    def __init__(self) -> None:
        super().__init__()
        self.where: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func in _READ_OPS or (
            torch.Tag.dynamic_output_shape in func.tags and not _integer_indexing(func, args)
        ):
            self._note(str(func))
        return func(*args, **(kwargs or {}))

    def _note(self, what: str) -> None:
        frame = sys._getframe(1)  # the innermost caller in pyro_gen, without reading sources
        while frame is not None and "pyro_gen" not in frame.f_code.co_filename:
            frame = frame.f_back
        at = f" at {frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else ""
        self.where.append(what + at)

    @property
    def count(self) -> int:
        return len(self.where)


def _integer_indexing(func: Any, args: tuple) -> bool:
    """Indexing by integer tensors: the result's shape is the indices' (no read); a boolean
    mask's result has as many elements as the mask has True values (a read)."""
    if func.overloadpacket not in (aten.index, aten.index_put):
        return False
    return all(i is None or i.dtype not in (torch.bool, torch.uint8) for i in args[1])


@contextmanager
def counting_reads() -> Iterator[HostReads]:
    mode = HostReads()
    saved = {name: getattr(torch.Tensor, name) for name in _READ_METHODS}

    def patched(name: str) -> Callable[..., Any]:
        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            mode._note(f"Tensor.{name}")
            return saved[name](self, *args, **kwargs)

        return method

    for name in _READ_METHODS:
        setattr(torch.Tensor, name, patched(name))
    try:
        with mode:
            yield mode
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def test_the_counter_sees_every_kind_of_read():
    x = torch.tensor([0.5, 2.0])
    reads = [
        lambda: x.max().item(),
        lambda: bool((x > 1).any()),
        lambda: float(x[0]),
        lambda: int(x[1]),
        lambda: x.tolist(),
        lambda: x.numpy(),
        lambda: torch.equal(x, x),
        lambda: x[x > 1],  # boolean mask: the result's size is read from the device
    ]
    for read in reads:
        with counting_reads() as counter:
            read()
        assert counter.count >= 1
    with counting_reads() as counter:
        (x * 2).sum().exp()
    assert counter.count == 0


def _vae() -> tuple[torch.nn.Module, Any, torch.Tensor]:
    return build_vae((8, 8), z_dim=4, hidden_dim=32), Trace_ELBO(), torch.rand(16, 8, 8).round()


def _realnvp() -> tuple[torch.nn.Module, Any, torch.Tensor]:
    flow = build_flow(
        "realnvp",
        (8, 8),
        dequantization="uniform",
        num_bins=17,
        num_layers=2,
        num_levels=1,
        hidden_channels=8,
        num_blocks=1,
    )
    return flow, Trace_ELBO(), torch.randint(0, 17, (16, 8, 8)).float()


def _ddpm() -> tuple[torch.nn.Module, Any, torch.Tensor]:
    # 5 x 5 pixels: a U-Net of one level, the smallest image network
    ddpm = build_ddpm((5, 5), timesteps=20, base_channels=8, num_bins=17)
    return ddpm, TraceMeanField_ELBO(), torch.rand(16, 5, 5)


MODELS = {"vae": _vae, "realnvp": _realnvp, "ddpm": _ddpm}


def _svi(name: str, in_program: bool) -> tuple[CompiledSVI, torch.Tensor]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    module, loss, x = MODELS[name]()
    svi = CompiledSVI(module.model, module.guide, pyro.optim.Adam({"lr": 1e-3}), loss)
    svi._flag_on_device = in_program
    # The first step is plain Pyro, the second records; the two after it re-trace the
    # model eagerly to check its structure (check_steps=2), as every 1000th step does.
    for _ in range(4):
        svi.step(x)
    assert svi.compiled, svi.fallback_reason
    return svi, x


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_host_read_in_steady_state_steps(name):
    """Before input checks ran on the device: 2 reads per step for the VAE, 4 for the image
    RealNVP and the image DDPM (one per check and step)."""
    svi, x = _svi(name, in_program=True)
    assert all(p.checked for p in svi._programs.values())  # the models' checks were found
    with counting_reads() as counter:
        for _ in range(3):
            svi.step(x)
    assert counter.where == []
    with counting_reads() as counter:
        svi.check()  # one transfer, when a read-back finds a NaN loss
    assert counter.count == 1


def _flow_2d() -> tuple[torch.nn.Module, Any, torch.Tensor]:
    return build_flow("realnvp", (2,), num_layers=2), Trace_ELBO(), torch.randn(16, 2)


@pytest.mark.parametrize(
    "make, bad", [(_vae, 3.0), (_flow_2d, math.nan), (_realnvp, 3.0), (_ddpm, 3.0)]
)
@pytest.mark.parametrize("in_program", [False, True])
def test_programs_with_input_checks_run_on_torchscript(make, bad, in_program):
    """The default backend runs the recorded program through TorchScript on the CPU. The
    checks' comparison with a recorded bool was once ``ne(Tensor, bool)``, which the tracer
    cannot take: every model with an input check ran as the plain recorded program (a 2-D
    RealNVP step took 1.8 times as long). So did every convolutional model, whose gradient
    ``convolution_backward`` takes a ``bool[3]`` the tracer cannot take either."""
    pyro.clear_param_store()
    module, loss, x = make()
    svi = CompiledSVI(module.model, module.guide, pyro.optim.Adam({"lr": 1e-3}), loss)
    svi._flag_on_device = in_program
    for _ in range(2):
        svi.step(x)
    (prog,) = svi._programs.values()
    assert prog.checked and hasattr(prog.fn, "traced")  # TorchScript's run (_unoptimized)
    with torch.no_grad():
        inputs = svi._example_inputs(prog, [x])
        for a, b in zip(prog.fn(*inputs), prog.gm(*inputs)):
            assert torch.equal(a, b)
        refused = svi._example_inputs(prog, [x * bad])  # fails the model's check
        assert float(prog.fn(*refused)[-1]) == 1.0 == float(prog.gm(*refused)[-1])


def test_the_cpu_path_reads_the_two_flags_and_nothing_else():
    """On the CPU a step reads the guard's flag and the input checks' flag, each in its own
    read (a CPU read costs 0.5 us, the two ops that would combine them 5 us), both where the
    update decides, and nothing else. The guard's flag is the one kept between steps, read
    through its NumPy view (no dispatched op: a quarter of ``item()``'s cost), so one
    dispatched read a step remains, the input checks'."""
    svi, x = _svi("realnvp", in_program=False)
    (prog,) = svi._programs.values()
    assert prog.guarded and prog.checked
    kept, view = svi._updates._raised_on_cpu
    assert view.ctypes.data == kept.data_ptr()  # the view reads the flag's own memory
    update, flags = svi._updates.program, []

    def program(grad_params, loss, grads, found, *args, **kwargs):  # noqa: ANN001, ANN202
        flags.append(found)
        return update(grad_params, loss, grads, found, *args, **kwargs)

    svi._updates.program = program
    with counting_reads() as counter:
        for _ in range(3):
            svi.step(x)
    assert len(flags) == 3 and all(f is kept for f in flags)  # the view reads what it raised
    assert counter.count == 1 * 3, counter.where
    assert all("compiled_update.py" in w for w in counter.where), counter.where


def _parameters() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


@pytest.mark.parametrize(
    "name, error", [("vae", r"expects data in \[0, 1\]"), ("realnvp", r"integers in 0\.\.16")]
)
def test_bad_input_is_refused_with_the_models_error_on_the_cpu_path(name, error):
    svi, x = _svi(name, in_program=False)
    before = _parameters()
    with pytest.raises(ValueError, match=error):
        svi.step(x + 0.5)
    after = _parameters()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_input_on_the_device_path_skips_the_update_and_check_names_the_step():
    svi, x = _svi("vae", in_program=True)
    before = _parameters()
    svi(7, x)  # fit's protocol: step number 7
    trained, adam = _parameters(), svi.optim.get_state()
    assert any(not torch.equal(before[k], trained[k]) for k in before)
    # fit's step 8 is the ninth step, named from 1 as fit's metrics count steps
    for step in (8, 9):  # out of [0, 1]: the Bernoulli likelihood's check fails
        assert torch.isnan(svi(step, x * 3))
    after = _parameters()
    assert all(torch.equal(trained[k], after[k]) for k in trained)
    assert all(
        torch.equal(adam[k]["state"][0]["step"], state["state"][0]["step"])
        for k, state in svi.optim.get_state().items()
    )
    with pytest.raises(
        InputCheckError, match=r"step 9 .*expects data in \[0, 1\], got values"
    ) as e:
        svi.check()
    assert "\n" not in str(e.value) and "Trace Shapes" not in str(e.value)  # one line
    svi.check()  # reported once
    assert svi.compiled
    assert torch.isfinite(svi(10, x))


def test_probing_changes_no_tensor_that_existed_before():
    """Running statistics and other buffers the model writes stay as they were."""
    stats, x = torch.zeros(2), torch.tensor([0.5, 2.0])

    def run() -> None:
        stats.mul_(0.9).add_(x, alpha=0.1)
        if bool((x < 0).any()):
            stats.fill_(float("nan"))
            raise ValueError("x must be non-negative")

    values, checks = probe_input_checks(run)
    assert values == [False] and checks == [True]
    assert torch.equal(stats, torch.zeros(2))


def test_control_flow_is_not_taken_for_an_input_check():
    """A branch whose other side runs is read each step, as before, and a flip falls back
    to plain Pyro (tests/infer/test_compiled.py::test_fallback_when_a_data_dependent_...)."""
    pyro.clear_param_store()
    module, loss, x = _vae()
    prepare = module.decoder.likelihood.prepare

    def branching(v: torch.Tensor) -> torch.Tensor:
        return prepare(v if bool(v.mean() > 0.25) else 1 - v)

    module.decoder.likelihood.prepare = branching
    svi = CompiledSVI(module.model, module.guide, pyro.optim.Adam({"lr": 1e-3}), loss)
    svi._flag_on_device = True
    for _ in range(4):
        svi.step(x)
    (prog,) = svi._programs.values()
    assert prog.guards == [True] and prog.checked
    svi.step(torch.zeros_like(x))
    assert not svi.compiled and "data-dependent control flow" in svi.fallback_reason


class _OnDevice(CompiledSVI):
    """fit's step as on an accelerator: the guard and the input checks in the program."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flag_on_device = True


def test_fit_reads_only_at_its_read_backs(monkeypatch):
    """Through fit: reads happen only where fit reads losses back (every READBACK_EVERY
    steps, and at the end), one transfer each."""

    monkeypatch.setattr(fit_step, "CompiledSVI", _OnDevice)
    pyro.clear_param_store()
    module, loss, x = _vae()
    x = torch.rand(64, 8, 8).round()
    every = fit_module.READBACK_EVERY
    per_step: list[int] = []
    with counting_reads() as counter:

        @changes_only_tensors  # it only reads: no check of the recording after it
        def mark(step: int, model: Any) -> None:
            per_step.append(counter.count)

        fit_module.fit(module, x, batch_size=1, steps=3 * every, loss=loss, step_callbacks=[mark])
    reads = [b - a for a, b in zip(per_step, per_step[1:])]
    # Between the callbacks of steps s and s+1 lie fit's read-back after step s (if due)
    # and step s+1. Skip the first steps: plain step, recording and structural checks.
    steady = {s: n for s, n in enumerate(reads, start=1) if s > 5}
    expected = {s: 0 if s % every else 1 for s in steady}  # one .tolist() per read-back
    assert steady == expected


def test_fit_raises_the_models_error_for_a_batch_refused_on_the_device(monkeypatch):
    """On the device path a refused batch only reads back as a NaN loss; fit asks the step
    for the model's own error instead of reporting a non-finite loss."""

    monkeypatch.setattr(fit_step, "CompiledSVI", _OnDevice)
    pyro.clear_param_store()
    module, loss, _ = _vae()
    x = torch.rand(16, 8, 8).round()
    x[12] = 3.0  # out of [0, 1]: the Bernoulli likelihood's input check fails on its step
    with pytest.raises(InputCheckError, match=r"step \d+ .*expects data in \[0, 1\]"):
        fit_module.fit(module, x, batch_size=1, epochs=1, loss=loss, progress=False)


def test_fit_trains_the_networks_in_bfloat16_when_asked():
    """fit(mixed_precision=torch.bfloat16): the first step's loss moves off float32's by
    bfloat16's rounding (it is applied) and stays within it (log-densities stay float32)."""
    losses = {}
    for precision in (None, torch.bfloat16):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        module, loss, x = _vae()
        result = fit_module.fit(
            module, x, batch_size=16, steps=1, loss=loss, progress=False,
            mixed_precision=precision,
        )  # fmt: skip
        losses[precision] = result.history[-1]["train_loss"]
    relative = abs(losses[torch.bfloat16] - losses[None]) / abs(losses[None])
    assert 0 < relative < 2e-2
