"""CompiledSVI falls back to plain Pyro steps where a recorded program cannot stand for
the model, and says why."""

from __future__ import annotations

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_gen.infer.compiled import CompiledSVI, supports
from tests.infer.compiled_models import (
    RTOL,
    TinyVAE,
    grads_of_store,
    make,
)

# float64 throughout (tests/conftest.py, whose autouse fixture also clears the param store)
pytestmark = pytest.mark.usefixtures("float64_default")


# --- fallbacks ----------------------------------------------------------------------------


class Alternating(TinyVAE):
    """Adds a site on every other call: structure a recorded program cannot stand for."""

    calls = 0

    def model(self, x):
        super().model(x)
        Alternating.calls += 1
        if Alternating.calls % 2:
            pyro.sample("extra", dist.Normal(x.new_zeros(()), 1.0), obs=x.new_zeros(()))


class Branching(TinyVAE):
    """Decodes differently depending on the data: a data-dependent branch."""

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            logits = self.dec(z) if x.mean() > 0.5 else -self.dec(z)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


class GammaGuide(TinyVAE):
    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            rate = nn.functional.softplus(self.loc(self.enc(x)))
            pyro.sample("z", dist.Gamma(rate + 0.5, 1.0).to_event(1))


def _train_and_check_fallback(gen, x, caplog, expected_reason, steps=3, loss=None, xs=None):
    svi = CompiledSVI(gen.model, gen.guide, pyro.optim.Adam({"lr": 0.05}), loss, backend="fx")
    with caplog.at_level(logging.WARNING, logger="pyro_gen"):
        losses = [float(svi.step(x if xs is None else xs[i])) for i in range(steps)]
    assert not svi.compiled
    assert expected_reason in svi.fallback_reason
    lines = [r.getMessage() for r in caplog.records if r.name == "pyro_gen"]
    assert len(lines) == 1 and expected_reason in lines[0], lines
    assert all(torch.isfinite(torch.tensor(losses)))
    return losses


def test_fallback_when_site_set_changes(caplog):
    gen, x = make("vae")
    gen.__class__ = Alternating
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    _train_and_check_fallback(gen, x, caplog, "site set changed")
    after = dict(pyro.get_param_store().items())
    assert after and all(not torch.equal(after[k], before[k]) for k in before)


def test_fallback_when_a_data_dependent_branch_flips(caplog):
    gen, x = make("vae")
    gen.__class__ = Branching
    ones, zeros = torch.ones_like(x), torch.zeros_like(x)
    # Recorded with mean > 0.5; the third batch takes the other branch.
    losses = _train_and_check_fallback(
        gen, x, caplog, "data-dependent control flow", xs=[ones, ones, zeros]
    )
    assert len(losses) == 3


def test_fallback_for_non_reparameterized_sampler(caplog):
    gen, x = make("vae")
    gen.__class__ = GammaGuide
    _train_and_check_fallback(gen, x, caplog, "random op")


def test_fallback_for_unsupported_elbo(caplog):
    assert supports(Trace_ELBO()) and supports(TraceMeanField_ELBO())
    assert not supports(TraceGraph_ELBO())
    gen, x = make("vae")
    _train_and_check_fallback(gen, x, caplog, "TraceGraph_ELBO", loss=TraceGraph_ELBO())


def test_compile_false_path_is_plain_pyro(caplog):
    losses = {}
    for backend in ("pyro", None):
        pyro.clear_param_store()
        gen, x = make("vae")
        optim = pyro.optim.Adam({"lr": 0.05})
        if backend is None:
            svi = SVI(gen.model, gen.guide, optim, Trace_ELBO())
        else:
            svi = CompiledSVI(gen.model, gen.guide, optim, backend=backend)
        pyro.set_rng_seed(0)
        with caplog.at_level(logging.INFO, logger="pyro_gen"):
            losses[backend] = [float(svi.step(x)) for _ in range(3)]
    assert losses["pyro"] == losses[None]
    assert not any(r.name == "pyro_gen" for r in caplog.records)


def test_non_finite_loss_keeps_parameters_and_raises():
    pyro.enable_validation(False)  # or the data check would raise before the loss
    gen, x = make("vae")
    optim = pyro.optim.Adam({"lr": 0.05})
    svi = CompiledSVI(gen.model, gen.guide, optim, backend="fx", check_steps=0)
    svi.step(x)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    bad = x.clone()
    bad[0, 0] = float("nan")
    # The loss comes back unread (fit reads it later and raises); the update is skipped.
    assert not torch.isfinite(svi(9, bad))
    assert svi.compiled
    for name, value in pyro.get_param_store().items():
        assert torch.equal(value, before[name]), name


def test_new_input_shape_records_a_new_program():
    gen, x = make("vae")
    svi = CompiledSVI(gen.model, gen.guide, backend="fx")
    for batch in (x, x[:4], x, x[:4]):
        pyro.set_rng_seed(1)
        expected = Trace_ELBO().loss_and_grads(gen.model, gen.guide, batch)
        grads_of_store()
        pyro.set_rng_seed(1)
        torch.testing.assert_close(
            svi.loss_and_grads(batch), torch.tensor(expected), rtol=RTOL, atol=0
        )
        grads_of_store()
    assert svi.compiled and len(svi._programs) == 2


def test_auto_runs_the_recorded_program_before_compiling():
    gen, x = make("vae")
    svi = CompiledSVI(gen.model, gen.guide)  # auto: compiles only after 500 steps
    for _ in range(4):  # a plain step for the new signature, then the program
        svi.step(x)
    (prog,) = svi._programs.values()
    assert svi.compiled and not prog.compiled and prog.calls == 3
    # TorchScript until Inductor (run unoptimized on the CPU, hence the wrapper)
    assert isinstance(getattr(prog.fn, "traced", prog.fn), torch.jit.ScriptModule)


@pytest.mark.parametrize(
    "loss_cls, form",
    [
        (Trace_ELBO, {"time_samples": 3}),
        (TraceMeanField_ELBO, {}),
        (TraceMeanField_ELBO, {"form": "full_chain"}),
    ],
)
def test_ddpm_time_plate_same_draws_same_loss_and_grads(loss_cls, form):
    # float32: the DDPM's schedule buffers are float32 whatever the default dtype.
    torch.set_default_dtype(torch.float32)
    from pyro_gen.diffusion.ddpm import DDPM
    from pyro_gen.nn.time_embedding import TimeMLP

    torch.manual_seed(0)
    ddpm = DDPM(TimeMLP(2, 16, num_layers=1), (2,), "linear", timesteps=6, **form)
    x = torch.randn(8, 2)
    compiled = CompiledSVI(ddpm.model, ddpm.guide, loss=loss_cls(), backend="fx")
    for seed in (1, 2):
        pyro.set_rng_seed(seed)
        expected = loss_cls().loss_and_grads(ddpm.model, ddpm.guide, x)
        expected_grads = grads_of_store()
        pyro.set_rng_seed(seed)
        actual = compiled.loss_and_grads(x)
        actual_grads = grads_of_store()
        assert compiled.compiled, compiled.fallback_reason
        torch.testing.assert_close(actual, torch.tensor(expected), rtol=RTOL, atol=1e-6)
        assert actual_grads.keys() == expected_grads.keys()
        for name in expected_grads:
            torch.testing.assert_close(
                actual_grads[name], expected_grads[name], rtol=RTOL, atol=1e-7, msg=name
            )


def test_a_model_that_fails_in_pyros_step_too_gets_its_error_alone(caplog):
    """A guide site without its plate: the compiled step's first run fails on it, falls
    back, and Pyro's plain step raises the same error. The fallback was announced first
    ("compiled SVI step off, using plain Pyro SVI"), a line about the compiled step above
    every bug of the user's own; it is now said once a plain step has run."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide(x):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))  # no plate

    svi = CompiledSVI(model, guide, pyro.optim.Adam({"lr": 0.05}), backend="fx")
    with (
        caplog.at_level(logging.WARNING, logger="pyro_gen"),
        pytest.raises(ValueError, match='at site "z", invalid log_prob shape'),
    ):
        svi.step(torch.zeros(4))
    assert not [r for r in caplog.records if r.name == "pyro_gen"]
    assert not svi.compiled  # the fallback itself stands, announced at a step that runs
