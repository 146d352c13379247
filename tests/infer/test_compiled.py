"""CompiledSVI: same draws give Pyro's loss, gradients and updates; fallbacks say why."""

from __future__ import annotations

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_gen.infer.annealing import kl_scale
from pyro_gen.infer.compiled import CompiledSVI, supports

RTOL = 1e-5


# float64 throughout (tests/conftest.py, whose autouse fixture also clears the param store)
pytestmark = pytest.mark.usefixtures("float64_default")


def assert_same_as_svi(run) -> None:
    """``run(compiled)`` trains from a fixed seed and returns its losses and the param
    store's values: the compiled step's equal Pyro SVI's, up to float rounding."""
    ref_losses, ref_params = run(False)
    losses, params = run(True)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=RTOL, atol=0)
    for name in ref_params:
        torch.testing.assert_close(params[name], ref_params[name], rtol=RTOL, atol=1e-8)


# --- models -----------------------------------------------------------------------------


class TinyVAE(nn.Module):
    def __init__(self, x_dim: int = 12, z_dim: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(x_dim, hidden), nn.Softplus())
        self.loc, self.log_scale = nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        pyro.module("loc", self.loc)
        pyro.module("log_scale", self.log_scale)
        with pyro.plate("data", x.shape[0]):
            h = self.enc(x)
            pyro.sample("z", dist.Normal(self.loc(h), self.log_scale(h).exp()).to_event(1))


class Subsampled(nn.Module):
    """A global latent plus amortized local latents under a subsampled data plate."""

    def __init__(self, size: int = 20, dim: int = 3) -> None:
        super().__init__()
        self.size, self.dim = size, dim
        self.dec = nn.Linear(2, dim)
        self.enc = nn.Linear(dim, 4)

    def model(self, x):
        pyro.module("sub_dec", self.dec)
        w = pyro.sample("w", dist.Normal(x.new_zeros(self.dim), 1.0).to_event(1))
        with pyro.plate("data", self.size, subsample_size=6) as idx:
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(w + self.dec(z), 0.5).to_event(1), obs=x[idx])

    def guide(self, x):
        pyro.module("sub_enc", self.enc)
        q_loc = pyro.param("q_loc", x.new_zeros(self.dim))
        q_scale = pyro.param("q_scale", x.new_ones(self.dim), constraint=dist.constraints.positive)
        pyro.sample("w", dist.Normal(q_loc, q_scale).to_event(1))
        with pyro.plate("data", self.size, subsample_size=6) as idx:
            h = self.enc(x[idx])
            pyro.sample("z", dist.Normal(h[:, :2], nn.functional.softplus(h[:, 2:])).to_event(1))


def make(kind: str):
    """(model/guide object, data, param perturbation done) for each model family."""
    torch.manual_seed(1)
    if kind == "vae":
        return TinyVAE(), torch.bernoulli(torch.full((10, 12), 0.4))
    if kind == "pyro_gen_vae":
        from pyro_gen.vae import VAE

        return VAE(event_shape=(3, 4), z_dim=2, hidden_dim=8), torch.bernoulli(
            torch.full((10, 3, 4), 0.4)
        )
    if kind == "flow":
        from pyro_gen.flows.base import FlowModel
        from pyro_gen.transforms import affine_coupling

        flow = FlowModel(
            (2,), [affine_coupling(2, parity=i % 2, hidden_dims=[8]) for i in range(2)]
        )
        with torch.no_grad():  # leave the identity start so every weight gets a gradient
            for p in flow.parameters():
                p.normal_(0.0, 0.3)
        return flow, torch.randn(16, 2)
    if kind == "subsampled":
        return Subsampled(), torch.randn(20, 3)
    raise ValueError(kind)


def grads_of_store() -> dict[str, torch.Tensor]:
    out = {}
    for name, p in pyro.get_param_store().named_parameters():
        if p.grad is not None:
            out[name] = p.grad.clone()
            p.grad = None
    return out


def wrap(gen, beta):
    if beta is None:
        return gen.model, gen.guide
    return kl_scale(gen.model, lambda: beta[0]), kl_scale(gen.guide, lambda: beta[0])


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


def assert_same_loss_and_grads(compiled: CompiledSVI, loss, seed: int, *args) -> None:
    """With the same seed, the compiled step gives Pyro's loss and gradients (on fresh
    copies of ``args``) and ran its program."""
    pyro.set_rng_seed(seed)
    expected = loss.loss_and_grads(compiled.model, compiled.guide, *(a.clone() for a in args))
    expected_grads = grads_of_store()
    pyro.set_rng_seed(seed)
    actual = compiled.loss_and_grads(*(a.clone() for a in args))
    actual_grads = grads_of_store()
    assert compiled.compiled, compiled.fallback_reason
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=RTOL, atol=0)
    assert actual_grads.keys() == expected_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(
            actual_grads[name], expected_grads[name], rtol=RTOL, atol=1e-10, msg=name
        )


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
