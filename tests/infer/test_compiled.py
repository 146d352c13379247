"""CompiledSVI: same draws give Pyro's loss, gradients and updates."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_gen.infer.compiled import CompiledSVI
from tests.infer.compiled_models import (
    RTOL,
    assert_same_as_svi,
    assert_same_loss_and_grads,
    grads_of_store,
    make,
    wrap,
)

# float64 throughout (tests/conftest.py, whose autouse fixture also clears the param store)
pytestmark = pytest.mark.usefixtures("float64_default")


# --- exactness --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vae", "pyro_gen_vae", "flow", "subsampled"])
@pytest.mark.parametrize("loss_cls", [Trace_ELBO, TraceMeanField_ELBO])
@pytest.mark.parametrize("annealed", [False, True])
def test_same_draws_same_loss_and_grads(kind, loss_cls, annealed):
    gen, x = make(kind)
    beta = [0.3] if annealed else None
    model, guide = wrap(gen, beta)
    compiled = CompiledSVI(model, guide, loss=loss_cls(), backend="fx")
    # The first call is a plain step, the second records, the third replays.
    for seed in (3, 4, 5):
        if beta is not None:
            beta[0] += 0.2  # a live schedule is read at every step, not baked in
        # Fresh tensors per call: a flow caches its last inverse by the input's identity
        # (Pyro's cache_size=1), so plain Pyro itself cannot take one tensor twice.
        assert_same_loss_and_grads(compiled, loss_cls(), seed, x)


@pytest.mark.parametrize("backend", ["fx", "jit", "inductor"])
def test_training_trajectory_matches_svi(backend):
    """Three Adam steps (fused here, per-parameter in Pyro) and a clipped gradient."""

    def run(compiled: bool):
        pyro.clear_param_store()
        gen, x = make("vae")
        optim = pyro.optim.Adam({"lr": 0.05})
        if compiled:
            svi = CompiledSVI(gen.model, gen.guide, optim, Trace_ELBO(), backend=backend)
        else:
            svi = SVI(gen.model, gen.guide, optim, Trace_ELBO())
        pyro.set_rng_seed(7)
        losses = [float(svi.step(x)) for _ in range(3)]
        assert not compiled or svi.compiled, svi.fallback_reason
        params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
        return losses, params, optim.get_state()

    ref_losses, ref_params, ref_state = run(False)
    losses, params, state = run(True)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=RTOL, atol=0)
    for name in ref_params:
        torch.testing.assert_close(params[name], ref_params[name], rtol=RTOL, atol=1e-8)
    # The fused optimizer's state is saved in Pyro's per-parameter format (checkpoints).
    assert state.keys() == ref_state.keys()
    for name in ref_state:
        got, want = state[name]["state"][0], ref_state[name]["state"][0]
        torch.testing.assert_close(got["exp_avg_sq"], want["exp_avg_sq"], rtol=RTOL, atol=1e-12)
        assert float(got["step"]) == float(want["step"]) == 3


@pytest.mark.parametrize(
    "loss",
    [
        lambda: Trace_ELBO(num_particles=3, vectorize_particles=True),
        lambda: pyro.infer.TraceEnum_ELBO(),
    ],
    ids=["vectorized", "enum"],
)
def test_an_unset_max_plate_nesting_is_guessed_on_pyros_random_stream(loss):
    """Pyro's ELBO guesses an unset max_plate_nesting at its first step by running the guide
    and model on the training RNG stream; the compiled step makes the guess at the same
    point, so it keeps Pyro's draws (before, it guessed inside its eager check, on a forked
    stream, and ended 0.19 away from SVI after 5 steps)."""

    def run(compiled: bool):
        pyro.clear_param_store()
        gen, x = make("vae")
        optim = pyro.optim.Adam({"lr": 0.05})
        svi = (CompiledSVI if compiled else SVI)(gen.model, gen.guide, optim, loss())
        pyro.set_rng_seed(3)
        losses = [float(svi.step(x)) for _ in range(5)]
        assert not compiled or svi.compiled, svi.fallback_reason
        return losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    assert_same_as_svi(run)


@pytest.mark.parametrize("backend", ["fx", "jit"])
def test_noise_drawn_like_a_traced_tensor_is_replayed(backend):
    """A model drawing its own noise with torch.randn_like(x) / rand_like (a user's
    denoising score matching): recorded, with Pyro's draws and losses (before, the step fell
    back, calling it "a sampler that is not standard noise")."""
    net = nn.Linear(3, 2)

    def model(x):
        pyro.module("score", net)
        with pyro.plate("data", x.shape[0]):
            t = torch.rand_like(x[:, :1]) * 0.9 + 0.1
            eps = torch.randn_like(x)
            pred = net(torch.cat([x + t.sqrt() * eps, t], -1))
            pyro.factor("dsm", -((pred + eps) ** 2).sum(-1))

    def run(compiled: bool):
        pyro.clear_param_store()
        torch.manual_seed(0)
        net.reset_parameters()
        x = torch.randn(8, 2)
        optim = pyro.optim.Adam({"lr": 0.05})
        svi = (CompiledSVI(model, lambda x: None, optim, backend=backend) if compiled
               else SVI(model, lambda x: None, optim, Trace_ELBO()))  # fmt: skip
        pyro.set_rng_seed(4)
        losses = [float(svi.step(x)) for _ in range(5)]
        assert not compiled or svi.compiled, svi.fallback_reason
        return losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    assert_same_as_svi(run)


def _params_used_through_views(x, y):
    w = pyro.param("w", 0.1 * torch.arange(12.0).reshape(3, 4))
    v = pyro.param("v", 0.1 * torch.arange(12.0).reshape(4, 3))
    s = pyro.param("s", torch.zeros(5))
    b = pyro.param("b", torch.zeros(3))
    fit_ = x @ w.t() + torch.einsum("bi,ij->bj", x, v) + b.expand(x.shape[0], 3)
    pyro.factor("f", -((fit_ - y) ** 2).sum() - (s.sum() - 1.0) ** 2)


@pytest.mark.parametrize("backend", ["fx", "jit"])
def test_gradients_reach_the_optimizer_in_their_parameters_layout(backend):
    """The gradient of ``s.sum()`` is one value expanded to ``s``'s shape; torch's fused Adam
    walks a gradient's memory as if laid out like its parameter, and read past it: ``s``
    trained to garbage (0.36 off after 10 steps, NaN in some runs) while plain SVI did not."""
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    params = {}
    for compiled in (True, False):
        pyro.clear_param_store()
        optim = pyro.optim.Adam({"lr": 0.05})
        if compiled:
            svi = CompiledSVI(_params_used_through_views, lambda x, y: None, optim, backend=backend)
        else:
            svi = SVI(_params_used_through_views, lambda x, y: None, optim, Trace_ELBO())
        for _ in range(10):
            svi.step(x, y)
        assert not compiled or svi.compiled, svi.fallback_reason
        if compiled:
            (prog,) = svi._programs.values()
            grads = prog.gm(*svi._example_inputs(prog, [x, y]))[1 : 1 + len(prog.grad_params)]
            for g, p in zip(grads, prog.grad_params):
                assert all(a == b for a, b, n in zip(g.stride(), p.stride(), p.shape) if n > 1)
        params[compiled] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    for name, value in params[False].items():
        torch.testing.assert_close(params[True][name], value, rtol=RTOL, atol=1e-7, msg=name)


def test_grad_clip_matches_clip_grad_norm():
    gen, x = make("vae")
    CompiledSVI(gen.model, gen.guide, backend="fx").loss_and_grads(x)  # creates params
    grads_of_store()
    pyro.set_rng_seed(5)
    Trace_ELBO().loss_and_grads(gen.model, gen.guide, x)
    params = [p for _, p in pyro.get_param_store().named_parameters()]
    torch.nn.utils.clip_grad_norm_(params, 0.5)
    expected = grads_of_store()
    clipped = CompiledSVI(gen.model, gen.guide, grad_clip=0.5, backend="fx")
    pyro.set_rng_seed(5)
    clipped.loss_and_grads(x)
    actual = grads_of_store()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=RTOL, atol=1e-10)


def test_resume_from_pyro_optimizer_state():
    """State saved by plain Pyro loads into the fused optimizer and continues identically."""

    def run(first_compiled: bool, second_compiled: bool):
        pyro.clear_param_store()
        gen, x = make("vae")
        optim = pyro.optim.Adam({"lr": 0.05})
        svi = CompiledSVI(gen.model, gen.guide, optim, backend="fx" if first_compiled else "pyro")
        pyro.set_rng_seed(2)
        svi.step(x)
        state = optim.get_state()
        optim2 = pyro.optim.Adam({"lr": 0.05})
        optim2.set_state(state)
        svi2 = CompiledSVI(
            gen.model, gen.guide, optim2, backend="fx" if second_compiled else "pyro"
        )
        for _ in range(2):  # a plain step for the new signature, then the program
            svi2.step(x)
        return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    ref = run(False, False)
    for got in (run(False, True), run(True, False)):
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=RTOL, atol=1e-8)
