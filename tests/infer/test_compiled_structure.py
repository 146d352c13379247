"""CompiledSVI's cost is bounded when a recording cannot stand for the model: a model whose
sites change with the batch runs as plain SVI after one eager pass and no recording, any
failure while recording falls back with one log line, and guides that build themselves on
their first call (Pyro's AutoNormal, pyro_gen's AutoAmortizedNormal) with a positive global
latent are recorded."""

from __future__ import annotations

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import nn

from pyro_gen.infer import compiled_backends, compiled_step_recorder
from pyro_gen.infer.compiled import CompiledSVI


class ToyDMM(nn.Module):
    """A deep-Markov-like model over padded sequences ``(B, T, 3)`` with a mask: one latent
    ``z_t`` and one observation per time step up to the batch's longest sequence, read
    either from the padded shape or, with ``loop_over="lengths"``, from the mask's values
    (same input shapes, different sites)."""

    def __init__(self, loop_over: str = "shape") -> None:
        super().__init__()
        self.trans, self.emit = nn.Linear(2, 2), nn.Linear(2, 3)
        self.comb = nn.Linear(5, 4)
        self.loop_over = loop_over
        self.model_runs = 0

    def steps(self, mask: torch.Tensor) -> int:
        if self.loop_over == "shape":
            return mask.shape[1]
        return int(mask.sum(-1).max())

    def model(self, seqs, mask):
        self.model_runs += 1
        pyro.module("toy_dmm", self)
        z = seqs.new_zeros(seqs.shape[0], 2)
        with pyro.plate("seqs", seqs.shape[0]):
            for t in range(self.steps(mask)):
                m = mask[:, t]
                z = pyro.sample(f"z_{t + 1}", dist.Normal(self.trans(z), 1.0).to_event(1).mask(m))
                lik = dist.Normal(self.emit(z), 1.0).to_event(1).mask(m)
                pyro.sample(f"x_{t + 1}", lik, obs=seqs[:, t])

    def guide(self, seqs, mask):
        pyro.module("toy_dmm", self)
        z = seqs.new_zeros(seqs.shape[0], 2)
        with pyro.plate("seqs", seqs.shape[0]):
            for t in range(self.steps(mask)):
                h = self.comb(torch.cat([z, seqs[:, t]], -1))
                q = dist.Normal(h[:, :2], nn.functional.softplus(h[:, 2:]))
                z = pyro.sample(f"z_{t + 1}", q.to_event(1).mask(mask[:, t]))


def sequences(lengths: list[int], pad_to: int | None = None):
    t_max = pad_to or max(lengths)
    mask = torch.arange(t_max) < torch.tensor(lengths)[:, None]
    return torch.randn(len(lengths), t_max, 3) * mask[..., None], mask


@pytest.mark.parametrize("loop_over", ["shape", "lengths"])
def test_sites_that_change_with_the_batch_cost_no_recording(loop_over, monkeypatch, caplog):
    recordings = []
    record = CompiledSVI._record
    monkeypatch.setattr(
        CompiledSVI, "_record", lambda self, *a: recordings.append(1) or record(self, *a)
    )
    gen = ToyDMM(loop_over)
    svi = CompiledSVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 0.01}), backend="jit")
    pad = 7 if loop_over == "lengths" else None
    batches = [sequences(lengths, pad) for lengths in ([3, 2], [5, 4], [3, 1], [6, 2], [5, 5])]
    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        losses = [svi.step(*batch) for batch in batches]
    assert not svi.compiled and "sites change with the batch" in svi.fallback_reason
    assert "site set changed" in svi.fallback_reason
    lines = [r.getMessage() for r in caplog.records if r.name == "pyro_gen"]
    assert len(lines) == 1 and "plain Pyro SVI" in lines[0], lines
    assert not recordings
    # Every step is one plain Pyro step (one model run); deciding took two eager passes.
    assert gen.model_runs == len(batches) + 2
    assert all(torch.isfinite(loss) for loss in losses)


@pytest.mark.parametrize("max_programs", [8, 2])
def test_new_shapes_with_the_same_sites_fall_back_without_recording(max_programs, caplog):
    """Padded to each batch's own length with a vectorized time axis: the sites stay, the
    shapes keep changing; each new shape costs one eager pass, never a recording."""

    class Vectorized(ToyDMM):
        def steps(self, mask):
            return 1  # one site whatever the length: only shapes change

    gen = Vectorized("shape")
    svi = CompiledSVI(gen.model, gen.guide, backend="jit", max_programs=max_programs)
    with caplog.at_level(logging.WARNING, logger="pyro_gen"):
        for length in (2, 3, 4, 5):
            svi.step(*sequences([length, 1]))
    assert not svi.compiled
    assert svi.fallback_reason.startswith("the shapes of the inputs change from batch to batch")
    assert "3 distinct input shapes of one argument structure in 3 steps" in svi.fallback_reason
    assert not svi._programs and gen.model_runs == 4 + 3


def test_a_last_partial_batch_is_recorded():
    """An epoch's last, smaller batch is a second signature, recorded when it comes back."""
    gen = ToyDMM("shape")
    svi = CompiledSVI(gen.model, gen.guide, backend="fx")
    full, partial = sequences([3, 2, 3]), sequences([3, 1])
    for _ in range(2):  # two epochs of four batches: each signature comes back once
        for batch in (full, full, full, partial):
            svi.step(*batch)
    assert svi.compiled and len(svi._programs) == 2


def test_any_recording_failure_falls_back_with_one_line(monkeypatch, caplog):
    def broken(gm):
        raise IndexError("tuple index out of range")

    monkeypatch.setattr(compiled_step_recorder, "simplify", broken)
    gen = ToyDMM("shape")
    x, mask = sequences([2, 2])
    svi = CompiledSVI(gen.model, gen.guide, backend="fx")
    with caplog.at_level(logging.WARNING, logger="pyro_gen"):
        losses = [svi.step(x, mask) for _ in range(3)]
    assert not svi.compiled
    assert svi.fallback_reason == "recording failed (IndexError: tuple index out of range)"
    assert len([r for r in caplog.records if r.name == "pyro_gen"]) == 1
    assert all(torch.isfinite(loss) for loss in losses)


class GlobalScale(nn.Module):
    """A positive global latent outside the data plate, local latents inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.dec = nn.Linear(2, 5)

    def model(self, x):
        pyro.module("global_scale_dec", self.dec)
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), sigma).to_event(1), obs=x)

    def hand_guide(self, x):
        loc = pyro.param("sigma_loc", torch.zeros(()))
        pyro.sample("sigma", dist.LogNormal(loc, 0.3))
        z_loc = pyro.param("z_loc", torch.zeros(x.shape[0], 2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(z_loc, 0.5).to_event(1))


def guide_for(kind: str, gen: GlobalScale):
    if kind == "hand":
        return gen.hand_guide
    if kind == "auto_normal":
        return AutoNormal(gen.model)
    from pyro_gen.vae import AutoAmortizedNormal

    return AutoAmortizedNormal(gen.model)


@pytest.mark.parametrize("kind", ["hand", "auto_normal", "auto_amortized"])
def test_positive_global_latent_records_and_matches_pyro(kind, caplog):
    torch.manual_seed(0)
    gen = GlobalScale()
    guide = guide_for(kind, gen)  # built lazily: its first call is the compiled step's
    x = torch.randn(6, 5)
    svi = CompiledSVI(gen.model, guide, pyro.optim.Adam({"lr": 0.01}), backend="fx")
    with caplog.at_level(logging.WARNING, logger="pyro_gen"):
        for _ in range(3):
            assert torch.isfinite(svi.step(x))
    assert svi.compiled, svi.fallback_reason
    assert not [r for r in caplog.records if r.name == "pyro_gen"]
    pyro.set_rng_seed(1)
    expected = Trace_ELBO().loss_and_grads(gen.model, guide, x.clone())
    expected_grads = {k: p.grad.clone() for k, p in pyro.get_param_store().named_parameters()}
    for _, p in pyro.get_param_store().named_parameters():
        p.grad = None
    pyro.set_rng_seed(1)
    actual = svi.loss_and_grads(x.clone())
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    for name, grad in expected_grads.items():
        got = pyro.get_param_store()[name].unconstrained().grad
        torch.testing.assert_close(got, grad, rtol=1e-4, atol=1e-6, msg=name)


def test_two_argument_structures_each_with_a_partial_batch_stay_compiled():
    """A semi-supervised model's labelled ``(x, y)`` and unlabelled ``(x,)`` batches, each
    with a last partial batch: four input signatures in a few steps, two shapes per
    structure, which is what training data give (before, the third signature within 30
    steps sent the tutorial's M2 back to plain SVI)."""

    def model(x, y=None):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)
            if y is not None:
                pyro.sample("y", dist.Normal(loc[0], 1.0), obs=y)

    def guide(x, y=None):
        pass

    svi = CompiledSVI(model, guide, backend="fx")
    sizes = [(100, False), (50, True)] * 3 + [(30, False), (20, True)] + [(100, False)] * 4
    for size, labelled in sizes:
        x = torch.randn(size, 2)
        svi.step(x, x[:, 0]) if labelled else svi.step(x)
    assert svi.compiled, svi.fallback_reason
    assert len(svi._sightings) == 4 and len(svi._programs) == 2  # partial batches: seen once


@pytest.mark.parametrize("by_name", [False, True])
def test_a_number_argument_changing_every_batch_is_named_in_the_fallback(by_name):
    """A Python float that changes every step (an annealing factor passed with the batch, as
    in Pyro's DMM example) makes a new signature each step. The fallback said "the shapes of
    the inputs change (1 distinct input shapes ...)"; it names the argument and the fix."""

    def model(x, beta):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]), pyro.poutine.scale(scale=beta):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)

    def guide(x, beta):
        pass

    pyro.clear_param_store()
    svi = CompiledSVI(model, guide, backend="jit", max_programs=3)
    for i in range(5):
        x, beta = torch.randn(10), 0.1 * (i + 1)
        svi.step(x, beta=beta) if by_name else svi.step(x, beta)
    assert not svi.compiled
    name = "argument 'beta'" if by_name else "positional argument 1"
    assert f"a non-tensor argument takes a new value from batch to batch ({name} (now 0.4)" in (
        svi.fallback_reason
    ), svi.fallback_reason
    assert "torch.tensor(value)" in svi.fallback_reason


def _counting_compiles(monkeypatch) -> list[str]:
    """CompiledSVI._compile replaced by a stand-in that runs the recorded program as it is
    and records the backend asked for (Inductor takes tens of seconds on a CPU)."""
    asked: list[str] = []

    def stand_in(self, prog, data, backend=None):
        asked.append(backend or compiled_backends.resolved_backend(self.backend))
        return prog.gm

    monkeypatch.setattr(CompiledSVI, "_compile", stand_in)
    return asked


@pytest.mark.parametrize("steered", [False, True])
def test_inductor_waits_for_a_program_that_data_values_steer(steered, monkeypatch):
    """compile=True compiles a recorded program with Inductor at once, unless values read
    from the data steer it (control flow): ProdLDA's int(counts.max()) changed at the next
    batch, and Inductor's 20 s on CPU were spent on a program used once. Such a program
    compiles once it has held for a while."""

    def model(x):
        loc = pyro.param("loc", torch.zeros(()))
        width = float(x.abs().max().ceil()) if steered else 1.0  # read from the data
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(loc, width), obs=x)

    def guide(x):
        pass

    pyro.clear_param_store()
    asked = _counting_compiles(monkeypatch)
    svi = CompiledSVI(model, guide, backend="inductor")
    x = torch.full((8,), 0.5)  # every batch takes the same path
    for _ in range(2):
        svi.step(x)
    (prog,) = svi._programs.values()
    assert bool(prog.guards) == steered
    assert asked == ([] if steered else ["inductor"])
    for _ in range(60):
        svi.step(x)
    assert asked == ["inductor"] and svi.compiled  # steered: after 50 steps that held
