"""CompiledSVI's step guard: a non-finite loss or gradient skips that update on the device,
leaves parameters and optimizer state exactly as they were, and returns a non-finite loss."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_gen.infer.compiled import CompiledSVI
from pyro_gen.infer.compiled_optim import non_finite


class Poisonable(nn.Module):
    """A Normal mean model whose loss (``poison="loss"``) or only gradient (``"grad"``)
    becomes non-finite while the buffer ``poison`` holds an infinity.

    The gradient case is the one that corrupted parameters: ``where(isfinite(b), b, 0)``
    is 0 going forward, but its backward multiplies a zero by ``d b / d loc = inf``.
    """

    def __init__(self, poison: str) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2))
        self.q_loc = nn.Parameter(torch.zeros(2))
        self.register_buffer("poison", torch.zeros(()))
        self.kind = poison

    def model(self, x):
        pyro.module("poisonable", self)
        z = pyro.sample("z", dist.Normal(self.loc, 1.0).to_event(1))
        blown = self.loc.sum() * self.poison
        if self.kind == "grad":
            pyro.factor("poison", torch.where(torch.isfinite(blown), blown, torch.zeros(())))
        else:
            pyro.factor("poison", -self.poison)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("poisonable", self)
        pyro.sample("z", dist.Normal(self.q_loc, 0.5).to_event(1))


def snapshot(optim: pyro.optim.PyroOptim) -> tuple[dict, dict]:
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return params, optim.get_state()


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name in before:
        for key, value in before[name]["state"][0].items():
            got = after[name]["state"][0][key]
            assert torch.equal(torch.as_tensor(got), torch.as_tensor(value)), (name, key)


@pytest.mark.parametrize("poison", ["loss", "grad"])
@pytest.mark.parametrize(
    "make_optim",
    [
        lambda: pyro.optim.Adam({"lr": 0.1}),  # fused: skipped through found_inf
        lambda: pyro.optim.SGD({"lr": 0.1, "momentum": 0.9}),  # per-parameter: one read
    ],
    ids=["fused_adam", "sgd"],
)
@pytest.mark.parametrize(
    "backend, in_program",
    [("fx", False), ("jit", False), ("fx", True), ("jit", True), ("pyro", None)],
    ids=["fx", "jit", "fx_flag_on_device", "jit_flag_on_device", "plain"],
)
def test_a_non_finite_step_changes_nothing(poison, make_optim, backend, in_program):
    """The program computes the flag; on the CPU the step reads it, on accelerators the
    fused update reads it on the device (forced here with ``_flag_on_device``)."""
    gen = Poisonable(poison)
    optim = make_optim()
    svi = CompiledSVI(gen.model, gen.guide, optim, backend=backend)
    svi._flag_on_device = in_program
    x = torch.randn(8, 2) + 1.0
    for _ in range(3):  # a plain step, the recording, a replay: the state has momentum
        assert torch.isfinite(svi.step(x))
    params, state = snapshot(optim)
    gen.poison.fill_(math.inf)
    for _ in range(2):
        loss = svi.step(x)
        assert not torch.isfinite(loss)
    assert svi.compiled == (backend != "pyro"), svi.fallback_reason
    assert all(p.guarded for p in svi._programs.values())
    after_params, after_state = snapshot(optim)
    for name, value in params.items():
        assert torch.equal(after_params[name], value), name
    assert_same_state(state, after_state)
    gen.poison.zero_()  # the next finite step updates again
    assert torch.isfinite(svi.step(x))
    assert not torch.equal(pyro.param("poisonable$$$loc"), params["poisonable$$$loc"])


@pytest.mark.parametrize("backend", ["fx", "jit"])
def test_the_flag_read_on_the_cpu_is_kept_and_cleared_once_read_raised(backend):
    """The program neither makes nor clears the flag the CPU step reads (three ops of a 1 ms
    step): it is an input, raised by the check only, and the step clears it once it reads
    it raised, so the next step starts from a clear flag."""
    gen = Poisonable("grad")
    svi = CompiledSVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 0.1}), backend=backend)
    x = torch.randn(8, 2)
    for _ in range(3):
        assert torch.isfinite(svi.step(x))
    (prog,) = svi._programs.values()
    amp = torch.ops.aten._amp_foreach_non_finite_check_and_unscale_.default
    (check,) = [n for n in prog.gm.graph.nodes if n.target is amp]
    assert all(a.op == "placeholder" for a in check.args[1:3])  # the flag and its 1: inputs
    flag = svi._updates.raised_flags(torch.device("cpu"))[0]
    assert any(e is flag for e in prog.extras)
    gen.poison.fill_(math.inf)
    assert not torch.isfinite(svi.step(x))  # raised, read, skipped
    assert flag.item() == 0.0
    gen.poison.zero_()
    before = pyro.param("poisonable$$$loc").detach().clone()
    assert torch.isfinite(svi.step(x)) and flag.item() == 0.0
    assert not torch.equal(pyro.param("poisonable$$$loc"), before)


def test_the_traced_program_holds_the_check_inline():
    """TorchScript records the guard's check as a call into a scripted function; the CPU runs
    traced programs unoptimized, which would run it as a call (a frame and an argument list
    a step), so the traced graph is inlined: the check is an op of the program itself."""
    gen = Poisonable("grad")
    svi = CompiledSVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 0.1}), backend="jit")
    x = torch.randn(8, 2)
    for _ in range(3):
        assert torch.isfinite(svi.step(x))
    (prog,) = svi._programs.values()
    graph = getattr(prog.fn, "traced", prog.fn).graph
    kinds = [n.kind() for n in graph.nodes()]
    assert "prim::CallFunction" not in kinds
    assert "aten::_amp_foreach_non_finite_check_and_unscale_" in kinds
    gen.poison.fill_(math.inf)  # and the inlined check still skips a poisoned step
    before = pyro.param("poisonable$$$loc").detach().clone()
    assert not torch.isfinite(svi.step(x))
    assert torch.equal(pyro.param("poisonable$$$loc"), before)


def test_guard_off_lets_a_non_finite_gradient_through():
    """What the guard prevents: without it, one NaN gradient makes the parameters NaN."""
    gen = Poisonable("grad")
    svi = CompiledSVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 0.1}), step_guard=False)
    x = torch.randn(8, 2)
    for _ in range(2):
        svi.step(x)
    gen.poison.fill_(math.inf)
    assert torch.isfinite(svi.step(x))  # the loss looks fine
    assert not torch.isfinite(pyro.param("poisonable$$$loc")).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None])
def test_non_finite_flag_matches_isfinite(bad):
    tensors = [torch.tensor(2.0, dtype=torch.float64), torch.randn(3, 4), torch.randn(5)]
    if bad is not None:
        tensors[1][2, 1] = bad
    expected = float(not all(torch.isfinite(t).all() for t in tensors))
    copies = [t.clone() for t in tensors]
    flag = non_finite(tensors)
    assert flag.dtype == torch.float32 and flag.item() == expected
    for t, c in zip(tensors, copies):  # multiplied by one: unchanged
        assert torch.equal(t, c) or (torch.isnan(t) == torch.isnan(c)).all()


@pytest.mark.parametrize("on_device", [None, True], ids=["cpu_reads", "flag_on_device"])
def test_a_gradient_expanded_from_a_scalar_is_checked(on_device):
    """The gradient of ``w.sum()`` is a 1 expanded to ``w``'s shape (one memory location):
    the guard's in-place check used to fail on it; it reads it through a copy."""
    pyro.clear_param_store()

    def model():
        s = pyro.param("w", torch.zeros(5)).sum()
        pyro.factor("f", s - 0.1 * s**2)

    svi = CompiledSVI(model, lambda: None, pyro.optim.Adam({"lr": 0.1}))
    svi._flag_on_device = on_device
    for _ in range(4):
        assert math.isfinite(float(svi.step()))
    assert svi.compiled, svi.fallback_reason
    assert not torch.equal(pyro.param("w"), torch.zeros(5))
