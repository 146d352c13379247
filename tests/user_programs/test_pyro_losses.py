"""Every Pyro loss object a user might hand to ``fit``, ``evaluate_elbo`` and
``iwae_log_likelihood``, on small plain-Pyro VAEs (``pyro.module`` networks, ``pyro.plate``
over the data), with hand-written guides and with
:class:`~pyro_gen.vae.AutoAmortizedNormal`.

Each check is against Pyro's own behaviour: ``fit(..., compile=False)`` takes exactly the
steps of ``pyro.infer.SVI`` on the same seed and batches; the default (compiled) step agrees
with it to float tolerance, or falls back to Pyro's step saying so in one log line; and the
evaluation helpers equal ``-loss.loss(...)`` per example where that is exact (a guide that is
the exact posterior makes every bound equal ``log p(X)``, whatever the estimator or batch).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import (
    SVI,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
    JitTraceMeanField_ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    TraceTailAdaptive_ELBO,
    TraceTMC_ELBO,
)
from torch import nn

from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from pyro_gen.vae import AutoAmortizedNormal

X_DIM, Z_DIM, K, N = 4, 2, 3, 16

# name -> constructor taking Pyro's keyword arguments (num_particles, ...)
LOSSES: dict[str, Callable[..., object]] = {
    "Trace_ELBO": Trace_ELBO,
    "TraceMeanField_ELBO": TraceMeanField_ELBO,
    "TraceGraph_ELBO": TraceGraph_ELBO,
    "TraceEnum_ELBO": TraceEnum_ELBO,
    "TraceTMC_ELBO": TraceTMC_ELBO,
    "RenyiELBO(0)": lambda **kw: RenyiELBO(alpha=0.0, **kw),
    "RenyiELBO(0.5)": lambda **kw: RenyiELBO(alpha=0.5, **kw),
    "JitTrace_ELBO": JitTrace_ELBO,
    "JitTraceGraph_ELBO": JitTraceGraph_ELBO,
    "JitTraceEnum_ELBO": JitTraceEnum_ELBO,
    "JitTraceMeanField_ELBO": JitTraceMeanField_ELBO,
}
ENUM = {"TraceEnum_ELBO", "JitTraceEnum_ELBO", "TraceTMC_ELBO"}
COMPILED = {"Trace_ELBO", "TraceMeanField_ELBO", "TraceEnum_ELBO", "JitTrace_ELBO"}
COMPILED |= {"JitTraceEnum_ELBO"}  # not JitTraceMeanField_ELBO: see compiled.supports


def _softplus_scale(h: torch.Tensor) -> torch.Tensor:
    return nn.functional.softplus(h) + 1e-3


class VAE(nn.Module):
    """z ~ N(0, I), x | z ~ N(decoder(z), I); an amortized Normal guide."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(Z_DIM, X_DIM)
        self.encoder = nn.Linear(X_DIM, 2 * Z_DIM)

    def mean(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.decoder(z)

    def latents(self) -> torch.Tensor | None:
        return None

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            y = self.latents()
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([Z_DIM]).to_event(1))
            pyro.sample("x", dist.Normal(self.mean(z, y), 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        h = self.encoder(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "z", dist.Normal(h[..., :Z_DIM], _softplus_scale(h[..., Z_DIM:])).to_event(1)
            )


class MixtureVAE(VAE):
    """A discrete cluster y (enumerated in parallel, not in the guide) shifts the mean."""

    def __init__(self) -> None:
        super().__init__()
        self.means = nn.Linear(K, X_DIM, bias=False)

    def latents(self) -> torch.Tensor:
        pyro.module("means", self.means)
        return pyro.sample(
            "y", dist.Categorical(logits=torch.zeros(K)), infer={"enumerate": "parallel"}
        )

    def mean(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.decoder(z) + self.means.weight.T[y]


class GlobalVAE(VAE):
    """A global shift w (outside the data plate) and a data plate of N subsampled by the
    indices passed with each minibatch, as Pyro's SVI tutorial part II does."""

    def model(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        w = pyro.sample("w", dist.Normal(torch.zeros(X_DIM), 1.0).to_event(1))
        with pyro.plate("data", N, subsample=idx):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([Z_DIM]).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z) + w, 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        loc = pyro.param("w_loc", torch.zeros(X_DIM))
        scale = pyro.param("w_scale", torch.ones(X_DIM), constraint=dist.constraints.positive)
        pyro.sample("w", dist.Normal(loc, scale).to_event(1))
        h = self.encoder(x)
        with pyro.plate("data", N, subsample=idx):
            pyro.sample(
                "z", dist.Normal(h[..., :Z_DIM], _softplus_scale(h[..., Z_DIM:])).to_event(1)
            )


def _data() -> torch.Tensor:
    return torch.randn(N, X_DIM, generator=torch.Generator().manual_seed(0))


def _program(kind: str, guide_kind: str) -> tuple[Callable, Callable, list[tuple]]:
    """Model, guide and two minibatches; an AutoAmortizedNormal is called once beforehand
    (as fit's docstring asks, so that both loops draw the same numbers)."""
    x = _data()
    if kind == "global":
        m: VAE = GlobalVAE()
        idx = torch.arange(N)
        batches = [(x[:8], idx[:8]), (x[8:], idx[8:])]
    else:
        m = MixtureVAE() if kind == "mixture" else VAE()
        batches = [(x[:8],), (x[8:],)]
    guide = m.guide
    if guide_kind == "auto":
        guide = AutoAmortizedNormal(m.model, hidden_dims=(8,))
        guide(*batches[0])
    return m.model, guide, batches


def _make_loss(name: str, particles: tuple[int, bool], max_plate_nesting: int | None):
    num, vectorize = particles
    kw: dict = {"num_particles": num, "vectorize_particles": vectorize}
    if max_plate_nesting is not None:
        kw["max_plate_nesting"] = max_plate_nesting
    return LOSSES[name](**kw)


def _store() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _svi_and_fit(kind, guide_kind, name, particles, mpn, compile, reference=None):
    """Per-epoch losses per example and final param stores of SVI (with the loss named
    ``reference``, default ``name``) and of fit (with ``name``), 2 epochs of the same two
    minibatches from the same seed."""
    epochs = 2
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, batches = _program(kind, guide_kind)
    pyro.set_rng_seed(1)
    loss = _make_loss(reference or name, particles, mpn)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss)
    svi_losses = []
    for _ in range(epochs):
        # Pyro's loss of a subsampled plate is a full-data estimate (scaled by N/B); fit
        # records the loss per example it trained on, which is that estimate's share.
        per_example = [svi.step(*b) / (N if kind == "global" else b[0].shape[0]) for b in batches]
        svi_losses.append(sum(per_example) / len(per_example))
    expected = _store()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, batches = _program(kind, guide_kind)
    pyro.set_rng_seed(1)
    result = fit(
        model,
        batches,
        guide=guide,
        loss=_make_loss(name, particles, mpn),
        optim=pyro.optim.Adam({"lr": 0.01}),
        epochs=epochs,
        compile=compile,
        progress=False,
    )
    return [h["train_loss"] for h in result.history], svi_losses, _store(), expected


def _kind(name: str) -> str:
    return "mixture" if name in ENUM else "vae"


# max_plate_nesting guessed by Pyro (it matters where particles are vectorized) or given;
# vectorized particles with it given are the options of the tests below.
OPTIONS = [(1, False, None), (3, False, 1), (3, True, None)]


@pytest.mark.parametrize(
    "num,vectorize,max_plate_nesting", OPTIONS, ids=[f"{n}-vec{v}-mpn{m}" for n, v, m in OPTIONS]
)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_fit_without_compile_is_pyro_svi(name, num, vectorize, max_plate_nesting):
    """compile=False takes Pyro's SVI steps bit for bit, for every loss and option."""
    particles = (num, vectorize)
    got, svi, store, expected = _svi_and_fit(
        _kind(name), "hand", name, particles, max_plate_nesting, compile=False
    )
    torch.testing.assert_close(got, svi, rtol=1e-6, atol=1e-6)
    assert sorted(store) == sorted(expected)
    for k in expected:
        assert torch.equal(store[k], expected[k]), k


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("kind", ["auto", "global"])
def test_fit_without_compile_is_pyro_svi_auto_guide_and_global(name, kind):
    """The same with AutoAmortizedNormal, and with a global latent and a subsampled plate."""
    # The global model has no enumerated site: there the enumeration losses estimate what
    # Trace_ELBO does (Pyro warns so), which is still what a user may pass.
    model_kind = "global" if kind == "global" else _kind(name)
    guide_kind = "auto" if kind == "auto" else "hand"
    got, svi, store, expected = _svi_and_fit(model_kind, guide_kind, name, (3, True), 1, False)
    torch.testing.assert_close(got, svi, rtol=1e-6, atol=1e-6)
    for k in expected:
        assert torch.equal(store[k], expected[k]), k


def _default_cases() -> list:
    """Each loss with vectorized particles; Trace_ELBO and TraceEnum_ELBO also with one
    particle (a program of its own)."""
    cases = []
    for name in sorted(LOSSES):
        one_too = name in ("Trace_ELBO", "TraceEnum_ELBO")
        for particles in [(1, False), (3, True)] if one_too else [(3, True)]:
            cases.append(pytest.param(name, particles, id=f"{name}-{particles[0]}"))
    return cases


@pytest.mark.parametrize("name,particles", _default_cases())
def test_fit_default_agrees_with_pyro_or_says_it_falls_back(name, particles, caplog):
    """compile left at its default: Pyro's losses to float tolerance; a loss the compiled
    step does not take (JitTraceMeanField_ELBO, whose Pyro 1.9 step draws its noise three
    times: see pyro_gen.infer.compiled.supports) trains with Pyro's step after exactly one
    log line naming it."""
    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        got, svi, store, expected = _svi_and_fit(_kind(name), "hand", name, particles, 1, None)
    torch.testing.assert_close(got, svi, rtol=1e-5, atol=1e-5)
    for k in expected:
        torch.testing.assert_close(store[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)
    said = [r.getMessage() for r in caplog.records if "not supported by the compiled" in r.message]
    if name in COMPILED:
        assert said == []
    else:
        assert len(said) == 1 and type(LOSSES[name]()).__name__ in said[0], said


def test_tail_adaptive_is_refused_in_one_line_and_evaluates():
    """fit refuses TraceTailAdaptive_ELBO (Pyro's loss is inf by design) with a ValueError
    naming it; the evaluation helpers take it as the objective and give the plain ELBO."""
    model, guide, batches = _program("vae", "hand")
    loss = TraceTailAdaptive_ELBO(num_particles=3, vectorize_particles=True)
    with pytest.raises(ValueError, match="TraceTailAdaptive_ELBO"):
        fit(model, batches, guide=guide, loss=loss, epochs=1, progress=False)
    elbo = evaluate_elbo(model, _data(), guide=guide, loss=loss)
    assert math.isfinite(elbo)


# ---------------------------------------------------------------------------------------
# Evaluation against closed forms and Pyro's losses.


class ExactGaussian:
    """x_i = w + z_i + e_i with w, z_i, e_i ~ N(0, 1) independent; the guide is the exact
    posterior q(w) q(z_i | x_i, w), so log p(X, w, Z) - log q(w, Z) = log p(X) for every
    draw: every bound, Pyro's or pyro_gen's, is log p(X) exactly, at any batch size."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        # x_i | w ~ N(w, 2): q(w) = N(sum(x)/2 / (1 + N/2), 1 / (1 + N/2))
        precision = 1.0 + x.shape[0] / 2.0
        self.w_loc = x.sum(0) / 2.0 / precision
        self.w_scale = precision**-0.5

    def model(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        w = pyro.sample("w", dist.Normal(torch.zeros(X_DIM), 1.0).to_event(1))
        with pyro.plate("data", self.x.shape[0], subsample=idx):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([X_DIM]).to_event(1))
            pyro.sample("x", dist.Normal(w + z, 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        w = pyro.sample("w", dist.Normal(self.w_loc, self.w_scale).to_event(1))
        with pyro.plate("data", self.x.shape[0], subsample=idx):
            pyro.sample("z", dist.Normal((x - w) / 2.0, 0.5**0.5).to_event(1))

    def log_evidence(self) -> float:
        n = self.x.shape[0]
        cov = 2.0 * torch.eye(n, dtype=torch.float64) + 1.0
        mvn = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov)
        return float(mvn.log_prob(self.x.double().T).sum())  # the X_DIM columns independent


@pytest.mark.parametrize("name", sorted(LOSSES) + ["TraceTailAdaptive_ELBO"])
def test_evaluate_elbo_is_pyro_loss_per_example_and_log_evidence(name):
    x = _data()
    exact = ExactGaussian(x)
    idx = torch.arange(N)
    # A mean-field loss takes KL(q(z | w) || p(z)) in closed form, which is exact in
    # expectation only: those estimates have Monte Carlo error, the others none.
    mean_field = "MeanField" in name
    tol, num = (0.02, 2000) if mean_field else (1e-4, 4)
    if name == "TraceTailAdaptive_ELBO":
        loss = TraceTailAdaptive_ELBO(num_particles=num, vectorize_particles=True)
        pyro_value = None  # Pyro's loss is inf by design
    else:
        loss = _make_loss(name, (num, True), 1)
        pyro_value = -loss.loss(exact.model, exact.guide, x, idx) / N
    truth = exact.log_evidence() / N
    for batch_size in (4, 16):
        got = evaluate_elbo(
            exact.model, (x, idx), guide=exact.guide, loss=loss, batch_size=batch_size
        )
        assert got == pytest.approx(truth, abs=tol), batch_size
    if pyro_value is not None:
        assert pyro_value == pytest.approx(truth, abs=tol)
    iwae = iwae_log_likelihood(
        exact.model, (x, idx), guide=exact.guide, num_samples=8, batch_size=4
    )
    assert iwae == pytest.approx(truth, abs=1e-4)


@pytest.mark.parametrize("name", ["Trace_ELBO", "TraceMeanField_ELBO", "JitTraceGraph_ELBO"])
@pytest.mark.parametrize("kind", ["vae", "global"])
def test_evaluate_elbo_is_mean_of_pyro_loss_on_an_inexact_guide(name, kind):
    """With an untrained guide the two estimates agree to Monte Carlo error, and
    evaluate_elbo does not depend on the batch size when there is a global latent."""
    model, guide, _ = _program(kind, "hand")
    x = _data()
    args = (x, torch.arange(N)) if kind == "global" else (x,)
    data = args if kind == "global" else x
    reference = -Trace_ELBO(num_particles=4000, vectorize_particles=True).loss(model, guide, *args)
    values = [
        evaluate_elbo(
            model, data, guide=guide, loss=_make_loss(name, (2000, True), 1), batch_size=b
        )
        for b in (4, 16)
    ]
    for v in values:
        assert v == pytest.approx(reference / N, abs=0.08), values


@pytest.mark.parametrize("guide_kind", ["hand", "auto"])
@pytest.mark.parametrize("kind", ["vae", "mixture", "global"])
def test_iwae_is_finite_and_not_below_the_elbo(kind, guide_kind):
    model, guide, _ = _program(kind, guide_kind)
    x = _data()
    data = (x, torch.arange(N)) if kind == "global" else x
    loss = TraceEnum_ELBO(max_plate_nesting=1) if kind == "mixture" else None
    elbo = evaluate_elbo(model, data, guide=guide, loss=loss, num_particles=64, per_example=True)
    iwae = iwae_log_likelihood(model, data, guide=guide, num_samples=64, per_example=True)
    assert torch.isfinite(iwae).all() and torch.isfinite(elbo).all()
    gap = (iwae - elbo).double()
    assert gap.mean() > -3 * gap.std() / math.sqrt(gap.numel()), gap


@pytest.mark.parametrize(
    "loss",
    [TraceMeanField_ELBO, TraceGraph_ELBO, JitTraceMeanField_ELBO, JitTraceGraph_ELBO],
    ids=lambda c: c.__name__,
)
def test_enumerated_site_with_a_loss_that_cannot_enumerate_is_named(loss):
    """Pyro's SVI fails on the first step with a bare ``KeyError: 'y'`` here; fit names the
    site and the loss before training. (Trace_ELBO draws the site from the model instead,
    as in Pyro, and TraceEnum_ELBO sums it out: both train, above.)"""
    model, guide, batches = _program("mixture", "hand")
    with pytest.raises(KeyError):
        SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss()).step(*batches[0])
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"\['y'\] are marked for enumeration.*TraceEnum_ELBO"):
        fit(model, batches, guide=guide, loss=loss(), epochs=1, progress=False)


class TensorMonteCarloVAE(VAE):
    """The Tensor Monte Carlo idiom: a continuous latent 'enumerated' by S draws from its
    prior (``num_samples``), an empty guide, ``TraceTMC_ELBO``. The decoder is linear, so
    log p(x) = log N(x; b, I + W W^T) is known."""

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(0.0, 1.0).expand([Z_DIM]).to_event(1)
            z = pyro.sample("z", prior, infer={"enumerate": "parallel", "num_samples": 20})
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def log_evidence(self, x: torch.Tensor) -> float:
        w, b = self.decoder.weight.detach(), self.decoder.bias.detach()
        cov = torch.eye(X_DIM) + w @ w.T
        return float(dist.MultivariateNormal(b, cov).log_prob(x).mean())


def test_sampled_enumeration_is_averaged_not_summed():
    """Each of the S prior draws weighs 1/S, as in TraceTMC_ELBO: evaluate_elbo is Pyro's TMC
    bound per example (below log p(x)) and the IWAE estimate is close to log p(x). Summing
    the draws' densities instead put both about 0.45 nats above log p(x)."""
    m, x = TensorMonteCarloVAE(), _data()
    guide = lambda x: None  # noqa: E731
    tmc = TraceTMC_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1)
    pyro_bound = -tmc.loss(m.model, guide, x) / N
    elbo = evaluate_elbo(m.model, x, guide=guide, loss=tmc)
    iwae = iwae_log_likelihood(m.model, x, guide=guide, num_samples=200)
    truth = m.log_evidence(x)
    assert elbo == pytest.approx(pyro_bound, abs=0.05)
    assert elbo < truth
    assert iwae == pytest.approx(truth, abs=0.1)
