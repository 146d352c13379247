"""pyro_gen's parts in users' double-precision programs, in the two ways Pyro users get
there: ``torch.set_default_dtype(torch.float64)`` ("default"), or float32 defaults with
float64 data and networks moved with ``.double()`` ("double").

What each check is against:

- ``fit`` on a plain-Pyro VAE and on a model with a global latent over a subsampled plate:
  ``compile=False`` takes ``pyro.infer.SVI``'s steps bit for bit, the default compiled
  step agrees to float64 rounding, the parameters stay float64, and the recorded losses
  are Pyro's float64 ones; a checkpointed run resumed equals the straight run bit for bit,
  its file holds float64 tensors, and a resume into a model of another dtype is refused
  (it was cast silently); float32 data into a float64 network fails as Pyro's SVI does.
- ``evaluate_elbo`` / ``iwae_log_likelihood`` with exact-posterior guides (an amortized
  ``.double()`` encoder; a global latent with a subsampled plate): every bound equals the
  closed-form log p(x) to float64 precision.
- every registered transform (``tests/transforms/registry.py``): log|det J| against
  ``torch.autograd.functional.jacobian`` to 1e-8, inverse round trip to 1e-10,
  ``torch.autograd.gradcheck`` of the forward map; ``AutoAmortizedNormal``, the IAF
  posterior and a flow guide built from pyro_gen transforms train as Pyro's SVI does.
- modules that build tensors themselves (time embedding, VampPrior init, noise schedule,
  decoders' draws) follow the program's dtype instead of rounding to float32; a float64
  DDPM trains as Pyro's SVI does, on the float64 schedule.
"""

from __future__ import annotations

import math
import tempfile

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.autograd.functional import jacobian

import pyro_gen.transforms as T
from pyro_gen.infer import CheckpointError, evaluate_elbo, fit, iwae_log_likelihood
from pyro_gen.infer.checkpoint import load_checkpoint
from pyro_gen.vae import VAE, AutoAmortizedNormal, make_posterior
from tests.transforms.registry import CASES, Case
from tests.transforms.test_registry import _concrete, _context, _prepare, _sum_event

MODES = ["default", "double"]
X_DIM, Z_DIM, N = 4, 2, 16


@pytest.fixture(autouse=True)
def _restore_default_dtype():
    old = torch.get_default_dtype()
    yield
    torch.set_default_dtype(old)


def _enter(mode: str) -> None:
    """The user's set-up before building anything."""
    if mode == "default":
        torch.set_default_dtype(torch.float64)


def _as_user_builds(module: nn.Module, mode: str) -> nn.Module:
    return module.double() if mode == "double" else module


def _scale(h: torch.Tensor) -> torch.Tensor:
    return nn.functional.softplus(h) + 1e-3


class PlainVAE(nn.Module):
    """A plain-Pyro VAE: ``pyro.module`` networks, a data plate, no pyro_gen part."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(Z_DIM, X_DIM)
        self.encoder = nn.Linear(X_DIM, 2 * Z_DIM)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        h = self.encoder(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(h[..., :Z_DIM], _scale(h[..., Z_DIM:])).to_event(1))


class GlobalVAE(PlainVAE):
    """A global shift ``w`` (param-store guide parameters) over a data plate of N
    subsampled by the indices passed with each minibatch."""

    def model(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        w = pyro.sample("w", dist.Normal(x.new_zeros(X_DIM), 1.0).to_event(1))
        with pyro.plate("data", N, subsample=idx):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z) + w, 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        loc = pyro.param("w_loc", x.new_zeros(X_DIM))
        scale = pyro.param("w_scale", x.new_ones(X_DIM), constraint=dist.constraints.positive)
        pyro.sample("w", dist.Normal(loc, scale).to_event(1))
        h = self.encoder(x)
        with pyro.plate("data", N, subsample=idx):
            pyro.sample("z", dist.Normal(h[..., :Z_DIM], _scale(h[..., Z_DIM:])).to_event(1))


def _data() -> torch.Tensor:
    return torch.randn(N, X_DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _program(kind: str, mode: str):
    """Model, guide and two minibatches, built from seed 0 as the user would."""
    pyro.set_rng_seed(0)
    m = _as_user_builds(GlobalVAE() if kind == "global" else PlainVAE(), mode)
    x = _data()
    if kind == "global":
        idx = torch.arange(N)
        return m.model, m.guide, [(x[:8], idx[:8]), (x[8:], idx[8:])]
    return m.model, m.guide, [(x[:8],), (x[8:],)]


def _store() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _svi(model, guide, batches, epochs: int, per_example: int | None) -> list[float]:
    """Pyro's SVI on the batches in order; each epoch's mean loss per example (a subsampled
    plate's loss estimates all N examples: its share per example is loss / N)."""
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    losses = []
    for _ in range(epochs):
        steps = [svi.step(*b) / (per_example or b[0].shape[0]) for b in batches]
        losses.append(sum(steps) / len(steps))
    return losses


def _fit(model, guide, batches, epochs: int, compile, checkpoint_dir=None) -> list[float]:
    result = fit(
        model,
        batches,
        guide=guide,
        optim=pyro.optim.Adam({"lr": 0.01}),
        epochs=epochs,
        compile=compile,
        progress=False,
        checkpoint_dir=checkpoint_dir,
    )
    return [h["train_loss"] for h in result.history]


def _fit_and_svi(kind: str, mode: str, compile, epochs: int = 3):
    _enter(mode)
    pyro.clear_param_store()
    model, guide, batches = _program(kind, mode)
    pyro.set_rng_seed(1)
    svi_losses = _svi(model, guide, batches, epochs, N if kind == "global" else None)
    expected = _store()
    pyro.clear_param_store()
    model, guide, batches = _program(kind, mode)
    pyro.set_rng_seed(1)
    losses = _fit(model, guide, batches, epochs, compile)
    return losses, svi_losses, _store(), expected


@pytest.mark.parametrize("compile", [False, None], ids=["compile_false", "compiled"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["vae", "global"])
def test_fit_takes_pyros_float64_steps(kind, mode, compile):
    """compile=False is SVI bit for bit; the compiled step agrees to float64 rounding; the
    parameters stay float64."""
    losses, svi_losses, store, expected = _fit_and_svi(kind, mode, compile)
    torch.testing.assert_close(losses, svi_losses, rtol=1e-12, atol=0)
    assert sorted(store) == sorted(expected)
    for name, value in expected.items():
        assert store[name].dtype == torch.float64, name
        if compile is False:
            assert torch.equal(store[name], value), name
        else:
            torch.testing.assert_close(store[name], value, rtol=1e-12, atol=1e-14, msg=name)


def test_recorded_losses_of_a_double_model_are_pyros_float64_losses():
    """The history's train_loss is the mean of SVI's float64 losses, not their float32
    rounding (a relative 1e-8 of it shows): the plain update (compile=False, a fallback,
    the compiled step's recording step) once wrapped Pyro's float loss in the default dtype."""
    losses, svi_losses, _, _ = _fit_and_svi("vae", "double", False)
    torch.testing.assert_close(losses, svi_losses, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_mixed_precision_on_a_float64_model_is_refused_before_training(mode):
    """Autocast casts float32 inputs only: bfloat16 "mixed precision" on a float64 model would
    train in float64, silently. fit refuses it, naming the parameters, before any step."""
    _enter(mode)
    pyro.clear_param_store()
    model, guide, batches = _program("vae", mode)
    with pytest.raises(ValueError, match=r"float64: \[.*\]\. Cast the model to float32"):
        fit(model, batches, guide=guide, epochs=1, progress=False, mixed_precision=torch.bfloat16)
    assert all(v.grad is None for v in pyro.get_param_store().values())


# --------------------------------------------------------------------------- checkpoints


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


def regression(x: torch.Tensor, y: torch.Tensor) -> None:
    """Param-store parameters only (no module): the store's own restore path."""
    w = pyro.param("w", torch.zeros(()))
    s = pyro.param("s", torch.ones(()), constraint=dist.constraints.positive)
    with pyro.plate("N", x.shape[0]):
        pyro.sample("y", dist.Normal(w * x, s), obs=y)


def _regression_data(dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, generator=g, dtype=torch.float64)
    return x.to(dtype), (3 * x + torch.randn(32, generator=g, dtype=torch.float64)).to(dtype)


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


@pytest.mark.parametrize("compile", [False, None], ids=["compile_false", "compiled"])
def test_float32_data_into_a_float64_network_fails_as_pyro_does(compile):
    """No silent cast of the data or the network: the error carries Pyro's own, and names
    the batch's dtype and the network's, with the conversions either way."""
    m = PlainVAE().double()
    x = _data().float()
    with pytest.raises(RuntimeError) as pyros:
        SVI(m.model, m.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()).step(x[:8])
    pyro.clear_param_store()
    with pytest.raises(RuntimeError) as ours:
        fit(m.model, x, guide=m.guide, epochs=1, batch_size=8, compile=compile, progress=False)
    assert str(pyros.value).splitlines()[0] in str(ours.value)
    assert "the batch is float32, Linear holds float64" in str(ours.value)
    assert "x.to(torch.float64)" in str(ours.value) and "module.float()" in str(ours.value)


@pytest.mark.parametrize("compile", [False, None], ids=["compile_false", "compiled"])
def test_float32_observations_of_a_float64_model_promote_as_in_pyro(compile):
    """A model with float64 params observing float32 data: Pyro's densities promote to
    float64; fit trains the same float64 parameters."""
    torch.set_default_dtype(torch.float64)
    x, y = _regression_data(torch.float32)
    stores = []
    for use_fit in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        if use_fit:
            fit(regression, [(x, y)], guide=lambda x, y: None, epochs=5, compile=compile,
                progress=False, optim=pyro.optim.Adam({"lr": 0.05}))  # fmt: skip
        else:
            svi = SVI(regression, lambda x, y: None, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
            for _ in range(5):
                svi.step(x, y)
        stores.append(_store())
    for name, value in stores[1].items():
        assert stores[0][name].dtype == torch.float64
        torch.testing.assert_close(stores[0][name], value, rtol=1e-12, atol=0, msg=name)


# ---------------------------------------------------------------------------- evaluation


class LinearGaussianVAE(nn.Module):
    """z ~ N(0, I), x | z ~ N(W z + b, s^2 I): x ~ N(b, W W^T + s^2 I). The guide is an
    amortized encoder (an nn.Linear) set to the exact posterior, so log p(x, z) - log q(z|x)
    = log p(x) for every draw."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.W = torch.randn(X_DIM, Z_DIM, generator=g, dtype=torch.float64)
        self.b = torch.randn(X_DIM, generator=g, dtype=torch.float64)
        self.noise = 0.5
        precision = torch.eye(Z_DIM, dtype=torch.float64) + self.W.T @ self.W / self.noise**2
        cov = torch.linalg.inv(precision)
        gain = cov @ self.W.T / self.noise**2  # posterior mean = gain (x - b)
        self.encoder = _as_user_builds(nn.Linear(X_DIM, Z_DIM), mode)
        with torch.no_grad():
            self.encoder.weight.copy_(gain)
            self.encoder.bias.copy_(-gain @ self.b)
        self.scale_tril = torch.linalg.cholesky(cov)

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.noise).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(self.encoder(x), scale_tril=self.scale_tril))

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.noise**2 * torch.eye(X_DIM, dtype=torch.float64)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)


class GlobalGaussian:
    """x_i = w + z_i + e_i, all N(0, 1): the guide q(w) q(z_i | x_i, w) is the exact
    posterior, so every bound is log p(X) at any batch size."""

    def __init__(self, x: torch.Tensor) -> None:
        precision = 1.0 + x.shape[0] / 2.0
        self.x = x
        self.w_loc, self.w_scale = x.sum(0) / 2.0 / precision, precision**-0.5

    def model(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        w = pyro.sample("w", dist.Normal(x.new_zeros(X_DIM), 1.0).to_event(1))
        with pyro.plate("data", self.x.shape[0], subsample=idx):
            z = pyro.sample("z", dist.Normal(x.new_zeros(X_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(w + z, 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        w = pyro.sample("w", dist.Normal(self.w_loc, self.w_scale).to_event(1))
        with pyro.plate("data", self.x.shape[0], subsample=idx):
            pyro.sample("z", dist.Normal((x - w) / 2.0, 0.5**0.5).to_event(1))

    def log_evidence(self) -> float:
        n = self.x.shape[0]
        cov = 2.0 * torch.eye(n, dtype=torch.float64) + 1.0
        mvn = dist.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov)
        return float(mvn.log_prob(self.x.T).sum())  # the X_DIM columns are independent


@pytest.mark.parametrize("mode", MODES)
def test_bounds_equal_the_closed_form_evidence_to_float64_precision(mode):
    _enter(mode)
    lg = LinearGaussianVAE(mode)
    x = 3.0 * _data() + 1.0 / 3.0  # values float32 cannot hold
    exact = lg.log_evidence(x)
    for batch_size in (N, 5):
        kw = {"guide": lg.guide, "batch_size": batch_size}
        values = {
            "elbo": evaluate_elbo(lg.model, x, per_example=True, **kw),
            "iwae": iwae_log_likelihood(lg.model, x, num_samples=7, per_example=True, **kw),
        }
        for name, v in values.items():
            assert v.dtype == torch.float64, name
            torch.testing.assert_close(v, exact, rtol=1e-13, atol=1e-12, msg=name)
        mean = iwae_log_likelihood(lg.model, x, num_samples=3, **kw)
        assert mean == pytest.approx(exact.mean().item(), abs=1e-12)

    gg = GlobalGaussian(x)
    data = (x, torch.arange(N))
    for batch_size in (N, 5):
        kw = {"guide": gg.guide, "batch_size": batch_size}
        elbo = evaluate_elbo(gg.model, data, **kw)
        iwae = iwae_log_likelihood(gg.model, data, num_samples=3, **kw)
        assert elbo == pytest.approx(gg.log_evidence() / N, abs=1e-12), batch_size
        assert iwae == pytest.approx(gg.log_evidence() / N, abs=1e-12), batch_size


# ---------------------------------------------------------------------------- transforms


def _transform_param(case: Case):
    marks = [pytest.mark.xfail(reason=case.known_bug, strict=True)] if case.known_bug else []
    return pytest.param(case, id=case.name, marks=marks)


def _is_ode(case: Case) -> bool:
    return T.ContinuousFlow in case.covers


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", [_transform_param(c) for c in CASES])
def test_transform_in_float64(case, mode):
    """log|det J| vs autograd's Jacobian, the inverse round trip, and gradcheck of the
    forward map, built under the default dtype ("default") or moved with .double()."""
    if _is_ode(case):
        # exact only to its solver's tolerance, at which test_registry checks it in float64
        pytest.skip("an ODE flow: nothing tighter to check than tests/transforms' float64 run")
    if mode == "default" or case.default_float64:  # see Case.default_float64 (Pyro's own)
        torch.set_default_dtype(torch.float64)
    t = _prepare(case)  # built, moved with .double(), perturbed, warmed up, eval mode
    ct = _concrete(case, t, _context(case))
    torch.manual_seed(1)
    x = torch.randn(case.shape, dtype=torch.float64)
    y = ct(x)
    assert y.dtype == torch.float64
    ladj = _sum_event(ct.log_abs_det_jacobian(x, y), 0)
    assert ladj.dtype == torch.float64
    J = jacobian(lambda v: ct(v.reshape(case.shape)).reshape(-1), x.reshape(-1))
    ref = torch.linalg.slogdet(J.reshape(y.numel(), x.numel()))[1]
    torch.testing.assert_close(ladj, ref, atol=1e-8, rtol=0)
    if case.invertible:
        xb = torch.randn(3, *case.shape, dtype=torch.float64)
        ctb = _concrete(case, t, _context(case, 3))
        back = ctb.inv(ctb(xb).clone())  # clone: a cache would return xb itself
        assert back.dtype == torch.float64
        torch.testing.assert_close(back, xb, atol=1e-10, rtol=0)
    if mode == "double":
        # clone: the transforms cache their last input by identity, and gradcheck perturbs
        # its input in place. The residual block's implicit gradient (a hook on the
        # fixed point) is not called with undefined output gradients, which gradcheck's
        # extra check needs; its values are checked all the same.
        undefined = case.name != "residual_block"
        assert torch.autograd.gradcheck(
            lambda v: ct(v.clone()), (x.clone().requires_grad_(),), check_undefined_grad=undefined
        )


# -------------------------------------------------------------------------------- guides


def _flow_guide_program(mode: str):
    """A global latent whose guide is a flow of pyro_gen transforms registered with
    pyro.module, over a plain-Pyro likelihood."""
    flow = nn.ModuleList([T.ActNorm(X_DIM), T.affine_coupling(X_DIM, hidden_dims=[8])])
    flow = _as_user_builds(flow, mode)

    def model(x):
        w = pyro.sample("w", dist.Normal(x.new_zeros(X_DIM), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("flow", flow)
        base = dist.Normal(x.new_zeros(X_DIM), 1.0).to_event(1)
        pyro.sample("w", dist.TransformedDistribution(base, list(flow)))

    return model, guide


def _guide_program(kind: str, mode: str):
    pyro.set_rng_seed(0)
    x = torch.rand(N, X_DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batches = [(x[:8],), (x[8:],)]
    if kind == "flow":
        model, guide = _flow_guide_program(mode)
        guide(x[:8])  # ActNorm initialises from its first batch, outside the compared steps
        return model, guide, batches
    if kind == "auto":
        vae = _as_user_builds(VAE((X_DIM,), z_dim=Z_DIM, hidden_dim=8, likelihood="gaussian"), mode)
        guide = AutoAmortizedNormal(vae.model, hidden_dims=(8,))
        guide(x[:8])  # built on its first call, as fit's docstring asks before comparing
        return vae.model, guide, batches
    posterior = make_posterior("iaf", (X_DIM,), Z_DIM, 8)
    vae = VAE((X_DIM,), z_dim=Z_DIM, hidden_dim=8, likelihood="gaussian", posterior=posterior)
    vae = _as_user_builds(vae, mode)
    return vae.model, vae.guide, batches


# compile=False in both modes, the compiled step where networks are moved with .double()
# (the flow guide's transforms are the transform test's)
GUIDE_CASES = [(k, m, False) for k in ("auto", "iaf", "flow") for m in MODES]
GUIDE_CASES += [(k, "double", None) for k in ("auto", "iaf")]


@pytest.mark.parametrize(
    "kind,mode,compile",
    GUIDE_CASES,
    ids=[f"{k}-{m}-{'compile_false' if c is False else 'compiled'}" for k, m, c in GUIDE_CASES],
)
def test_pyro_gen_guides_train_as_pyro_svi_in_float64(kind, mode, compile):
    """AutoAmortizedNormal, the IAF posterior and a flow guide of pyro_gen transforms: the
    parameters, the encoder built lazily from float64 rows included, stay float64 and take
    SVI's steps (bit for bit with compile=False)."""
    _enter(mode)
    stores = []
    for use_fit in (True, False):
        pyro.clear_param_store()
        model, guide, batches = _guide_program(kind, mode)
        pyro.set_rng_seed(1)
        if use_fit:
            _fit(model, guide, batches, 2, compile)
        else:
            _svi(model, guide, batches, 2, None)
        stores.append(_store())
    ours, theirs = stores
    assert sorted(ours) == sorted(theirs) and ours
    for name, value in theirs.items():
        assert ours[name].dtype == torch.float64, name
        if compile is False:
            assert torch.equal(ours[name], value), name
        else:
            torch.testing.assert_close(ours[name], value, rtol=1e-11, atol=1e-13, msg=name)


# ------------------------------------------------------ tensors pyro_gen builds by itself


def test_parts_built_under_float64_defaults_are_float64():
    """Each part made its own float32 tensor whatever the default: a time embedding's
    frequencies (its MLP then refused them), VampPrior pseudo-inputs from ``init``, and a
    noise schedule's coefficients (a float64 DDPM's bound in float32 precision)."""
    from pyro_gen.diffusion.schedules import NoiseSchedule, linear_betas
    from pyro_gen.nn.time_embedding import SinusoidalTimeEmbedding
    from pyro_gen.vae import VampPrior

    torch.set_default_dtype(torch.float64)
    t = torch.tensor([0.1, 0.7])
    assert SinusoidalTimeEmbedding(8, out_dim=6)(t).dtype == torch.float64
    emb = SinusoidalTimeEmbedding(8)(t)
    half = torch.arange(4, dtype=torch.float64) / 4
    args = t[:, None] * torch.exp(-math.log(10000.0) * half)
    torch.testing.assert_close(emb, torch.cat([args.sin(), args.cos()], -1), rtol=0, atol=1e-15)

    vamp = VampPrior((X_DIM,), num_components=3, init=torch.rand(3, X_DIM))
    assert all(p.dtype == torch.float64 for p in vamp.parameters())

    betas = linear_betas(5, 0.1, 0.5).double()
    schedule = NoiseSchedule(betas)
    exact = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(schedule.alphas_cumprod, exact, rtol=1e-15, atol=0)


@pytest.mark.parametrize("likelihood", ["gaussian", "categorical"])
def test_decoders_draws_keep_a_double_models_dtype(likelihood):
    """``decode(z, mean=False)`` / ``sample(mean=False)`` of a .double() VAE and hierarchical
    VAE rounded their draws to float32 (``.float()`` / the default dtype)."""
    from pyro_gen.vae import HierarchicalVAE

    z = torch.randn(5, Z_DIM, dtype=torch.float64)
    vae = VAE((X_DIM,), z_dim=Z_DIM, hidden_dim=8, likelihood=likelihood).double()
    assert vae.decode(z, mean=False).dtype == torch.float64
    assert vae.sample(5, mean=False).dtype == torch.float64
    hvae = HierarchicalVAE((X_DIM,), z_dims=(Z_DIM, 2), hidden_dim=8, likelihood=likelihood)
    hvae = hvae.double()
    pyro.set_rng_seed(0)
    draws = hvae.decode(z, mean=False)
    assert draws.dtype == torch.float64
    if likelihood == "gaussian":  # the draw itself: the decoder's mean plus float64 noise
        pyro.set_rng_seed(0)
        expected = hvae.decoder(z).sample()
        assert torch.equal(draws, expected)


@pytest.mark.parametrize("mode", MODES)
def test_a_float64_ddpm_trains_as_pyro_svi(mode):
    """A DDPM (TimeMLP network, time-plate bound) built under float64 defaults failed at its
    first step (its time embedding's float32 features into a float64 MLP); moved with
    .double(), its schedule held float32-rounded coefficients. Now its coefficients are
    the float64 ones and fit takes SVI's steps bit for bit."""
    from pyro_gen.diffusion import build_ddpm
    from pyro_gen.diffusion.schedules import make_schedule

    _enter(mode)
    x = _data()[:, :2]
    stores = []
    for use_fit in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        ddpm = _as_user_builds(build_ddpm((2,), timesteps=10, hidden_dim=8), mode)
        pyro.set_rng_seed(1)
        if use_fit:
            _fit(ddpm.model, ddpm.guide, [(x[:8],), (x[8:],)], 1, False)
        else:
            _svi(ddpm.model, ddpm.guide, [(x[:8],), (x[8:],)], 1, None)
        stores.append(_store())
    for name, value in stores[1].items():
        assert stores[0][name].dtype == torch.float64, name
        assert torch.equal(stores[0][name], value), name
    torch.set_default_dtype(torch.float64)  # the float64 computation, as a reference
    reference = make_schedule("linear", 10)
    for name, value in reference.named_buffers():
        assert torch.equal(getattr(ddpm.schedule, name), value), name
    exact = torch.cumprod(1 - reference.betas, 0)
    torch.testing.assert_close(ddpm.schedule.alphas_cumprod, exact, rtol=1e-15, atol=0)
