"""CompiledSVI's loss and gradients on the model/guide pairs of Pyro's own gradient tests.

Pyro checks its ELBOs' gradients in tests/infer/test_gradient.py (plates with subsampling,
a particle plate nested around a data plate, ``poutine.scale``, vectorized and sequential
particles, reparameterized and score-function guide sites, ``TraceMeanField_ELBO``'s
analytic KL, a guide site enumerated by sampling), test_conjugate_gradients.py (a Gaussian
chain whose guide is the exact posterior, ``TraceGraph_ELBO`` with decaying-average
baselines) and test_enum.py (discrete sites enumerated in guide and model, masks and
scales, Markov chains, against closed forms and hand-summed models); ``obs_mask`` and
nested self-subsampling plates, which those tests leave to test_valid_models, are added.
The same pairs, written again here (read from Pyro, not copied), run through
:class:`~pyro_gen.infer.compiled.CompiledSVI` (``fit``'s default step) and through Pyro's
``loss.loss_and_grads``, each call on the same seed from the same param store, so both see
the same draws:

- the loss and every parameter's gradient must be Pyro's, to float rounding;
- the step must take the path the pair states: its recorded program (which then ran every
  call after each signature's first plain one), or Pyro's step after one log line on the
  ``"pyro_gen"`` logger saying why;
- where Pyro's test compares with an analytic gradient, the compiled step's gradient is
  compared with it too: per draw (the pathwise and score-function formulas of
  test_particle_gradient and, instead of 5000 averaged draws, of the sequential-particle
  test), exactly (fully enumerated discrete sites) or averaged over enough vectorized
  particles, at Pyro's precision.

Pyro's grid is trimmed to the rows that take a new path (each recording costs a second or
more); rows that fall back run few particles, as their gradient is Pyro's own.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import constraints
from pyro.distributions.testing import fakes
from pyro.infer import (
    JitTrace_ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    config_enumerate,
)
from torch.distributions import kl_divergence

from pyro_gen.infer.compiled import CompiledSVI

COMPILED = "compiled"
NOT_REPARAM = r"guide site 'z' \(\w+\) is not reparameterizable"
TRACEGRAPH = "TraceGraph_ELBO is not supported"
DATA = torch.tensor([-0.5, 2.0])
# E[d(-ELBO)/d loc] and E[d(-ELBO)/d scale] of Pyro's two-point pair at loc=0, scale=1
EXPECTED = {"loc": torch.tensor([0.5, -2.0]), "scale": torch.tensor([2.0])}
# Vectorized particles for a mean gradient: the scale's per-particle gradient has a standard
# deviation of about 4.5, so Pyro's precision of 0.06 is four standard errors.
PARTICLES = 100_000


# float64 throughout (tests/conftest.py, whose autouse fixture also clears the param store)
pytestmark = pytest.mark.usefixtures("float64_default")


Call = tuple[tuple, dict]
Result = tuple[float, dict[str, torch.Tensor]]


def _grads() -> dict[str, torch.Tensor]:
    out = {}
    for name, p in pyro.get_param_store().named_parameters():
        if p.grad is not None:
            out[name] = p.grad.detach().clone()
            p.grad = None
    return out


def _calls(step: Callable[..., Any], calls: list[Call]) -> list[Result]:
    """Each call's loss and gradients, call ``i`` on seed ``i``, from an empty param store.

    Whole sequences rather than interleaved calls: a decaying-average baseline keeps its
    state in the param store, which each sequence must move alike."""
    pyro.clear_param_store()
    out = []
    for seed, (args, kwargs) in enumerate(calls):
        pyro.set_rng_seed(seed)
        out.append((float(step(*args, **kwargs)), _grads()))
    return out


def _pyro_loss_and_grads(loss: Any, model, guide, args: tuple, kwargs: dict) -> Any:
    """As Pyro's SVI takes a loss: an ELBO's ``loss_and_grads``, or a callable loss
    differentiated (Pyro's ``DiffTrace_ELBO`` in test_gradient.py)."""
    if hasattr(loss, "loss_and_grads"):
        return loss.loss_and_grads(model, guide, *args, **kwargs)
    value = loss(model, guide, *args, **kwargs)
    value.backward()
    return value.detach()


def same_as_pyro(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    make_loss: Callable[[], Any],
    calls: list[Call],
    path: str,
    caplog: pytest.LogCaptureFixture,
) -> tuple[list[Result], CompiledSVI]:
    """Runs ``calls`` through Pyro's ``loss_and_grads`` and ``CompiledSVI.loss_and_grads``:
    the same losses and gradients call by call, and the path ``path`` (COMPILED or a regular
    expression of the logged fallback reason). Returns the compiled step's results, and the
    step."""
    pyro_loss = make_loss()
    theirs = _calls(lambda *a, **k: _pyro_loss_and_grads(pyro_loss, model, guide, a, k), calls)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        # built here: an unsupported loss says so when the step is made
        svi = CompiledSVI(model, guide, pyro.optim.SGD({"lr": 0.1}), make_loss(), backend="fx")
        ours = _calls(svi.loss_and_grads, calls)
    off = [r.getMessage() for r in caplog.records if "compiled SVI step off" in r.getMessage()]
    if path == COMPILED:
        assert svi.compiled and not off, (svi.fallback_reason, off)
        # one plain call for the input signature, then the recorded program every call
        assert sum(p.calls for p in svi._programs.values()) == len(calls) - 1
    else:
        assert not svi.compiled and len(off) == 1, off
        assert re.search(path, svi.fallback_reason), svi.fallback_reason
    for i, ((loss, grads), (want, want_grads)) in enumerate(zip(ours, theirs)):
        assert loss == pytest.approx(want, rel=1e-9, abs=1e-9), f"loss of call {i}"
        assert grads.keys() == want_grads.keys(), (i, sorted(grads), sorted(want_grads))
        for name in grads:
            torch.testing.assert_close(
                grads[name], want_grads[name], rtol=1e-7, atol=1e-9, msg=f"{name}, call {i}"
            )
    return ours, svi


def _assert_near(grads: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], prec: float):
    assert grads.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(
            grads[name], expected[name].to(grads[name]), rtol=0, atol=prec, msg=name
        )


# --- test_gradient.py: the two-point pair ---------------------------------------------------


def normal_of(reparam: str) -> type:
    return fakes.NonreparameterizedNormal if reparam == "nonreparam" else dist.Normal


def two_point_pair(reparam: str, subsample_size: int = 2, scale: float = 1.0):
    """Pyro's pair: z_i ~ N(0, 1), x_i ~ N(z_i, 1) observed at DATA; q(z_i) = N(loc_i, scale),
    under a data plate subsampled by the indices the caller passes."""
    normal = normal_of(reparam)
    # "reparam-False": a reparameterizable Normal told it has no rsample (Pyro's has_rsample_)
    has_rsample = False if reparam == "reparam-False" else None

    def model(subsample=None):
        with pyro.plate("data", len(DATA), subsample_size, subsample) as ind:
            z = pyro.sample("z", normal(0.0, 1.0))
            pyro.sample("x", normal(z, 1.0), obs=DATA[ind])

    def guide(subsample=None):
        s = pyro.param("scale", lambda: torch.tensor([1.0]))
        with pyro.plate("data", len(DATA), subsample_size, subsample):
            loc = pyro.param("loc", lambda: torch.zeros(len(DATA)), event_dim=0)
            q = normal(loc, s)
            if has_rsample is not None:
                q.has_rsample_(has_rsample)
            pyro.sample("z", q)

    if scale != 1.0:
        model, guide = poutine.scale(model, scale=scale), poutine.scale(guide, scale=scale)
    return model, guide


def _pathwise(reparam: str) -> bool:
    return reparam == "reparam"


@pytest.mark.parametrize(
    "elbo, reparam",
    [(Trace_ELBO, reparam) for reparam in ("reparam", "reparam-False", "nonreparam")]
    # TraceEnum_ELBO's own score-function surrogate, and its pathwise one
    + [(TraceEnum_ELBO, "nonreparam"), (TraceEnum_ELBO, "reparam")],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_particle_gradient(elbo, reparam, caplog):
    """Pyro's test_particle_gradient: one particle, the gradient against its closed form
    on the draws the step took (pathwise, or score function)."""
    model, guide = two_point_pair(reparam)

    def make_loss():
        return elbo(max_plate_nesting=1, strict_enumeration_warning=False)

    path = COMPILED if _pathwise(reparam) else NOT_REPARAM
    results, _ = same_as_pyro(model, guide, make_loss, [((), {})] * 3, path, caplog)
    # The last call (the program's replay) against the formula on its own draws (seed 2).
    pyro.set_rng_seed(2)
    guide_tr = poutine.trace(guide).get_trace()
    model_tr = poutine.trace(poutine.replay(model, guide_tr)).get_trace()
    guide_tr.compute_log_prob()
    model_tr.compute_log_prob()
    z = guide_tr.nodes["z"]["value"].detach()
    loc, scale = pyro.param("loc").detach(), pyro.param("scale").detach()
    if _pathwise(reparam):
        expected = {
            "scale": -(-z * (z - loc) + (DATA - z) * (z - loc) + 1).sum(0, keepdim=True) / scale,
            "loc": -(-z + (DATA - z)),
        }
    else:
        elbo_value = (
            model_tr.nodes["x"]["log_prob"]
            + model_tr.nodes["z"]["log_prob"]
            - guide_tr.nodes["z"]["log_prob"]
        ).detach()
        dlogq_dloc = (z - loc) / scale**2
        dlogq_dscale = (z - loc) ** 2 / scale**3 - 1 / scale
        # TraceEnum_ELBO's surrogate keeps log q's own gradient (mean zero); Trace_ELBO's not
        own = 1.0 if elbo is TraceEnum_ELBO else 0.0
        expected = {
            "scale": -(dlogq_dscale * (elbo_value - own)).sum(0, keepdim=True),
            "loc": -(dlogq_dloc * (elbo_value - own)),
        }
    _assert_near(results[-1][1], expected, 1e-9)


def _vectorized(elbo: type, particles: int, nesting: int | None = 1) -> Callable[[], Any]:
    """Pyro's ELBO with vectorized particles; ``nesting`` None lets the ELBO guess it."""

    def make_loss():
        return elbo(
            **({} if nesting is None else {"max_plate_nesting": nesting}),
            num_particles=particles,
            vectorize_particles=True,
            strict_enumeration_warning=False,
        )

    return make_loss


# Pyro's grid, less the rows that repeat a path: a non-reparameterized site falls back
# before the loss matters, so it runs with Trace_ELBO (and with a site enumerated by sampling,
# whose fallback says something else), and TraceGraph_ELBO falls back whatever the pair.
SUBSAMPLE_ROWS = [
    pytest.param(elbo, local, reparam, subsample, id=f"{name}-{reparam}-{tag}")
    for name, elbo, local, reparams in [
        ("Trace", Trace_ELBO, False, ["reparam", "nonreparam"]),
        ("TraceMeanField", TraceMeanField_ELBO, False, ["reparam", "nonreparam"]),  # analytic KL
        ("TraceEnum", TraceEnum_ELBO, False, ["reparam"]),
        ("TraceEnum-local-samples", TraceEnum_ELBO, True, ["reparam", "nonreparam"]),
        ("TraceGraph", TraceGraph_ELBO, False, ["nonreparam"]),
    ]
    for reparam in reparams
    for subsample, tag in [(False, "full"), (True, "subsample-scaled")]
    if subsample
    or (reparam == "reparam" and elbo in (Trace_ELBO, TraceMeanField_ELBO) and not local)
]


@pytest.mark.parametrize("elbo, local_samples, reparam, subsample", SUBSAMPLE_ROWS)
def test_subsample_gradient(elbo, local_samples, reparam, subsample, caplog):
    """Pyro's test_subsample_gradient: the user's subsample indices (one example of two, or
    both), ``poutine.scale`` on model and guide (by 2 where subsampled), vectorized particles
    or a guide site enumerated by sampling; the mean gradient is ``scale * EXPECTED``."""
    scale = 2.0 if subsample else 1.0
    # a mean gradient only where the program runs (non-reparameterized sites fall back)
    particles = PARTICLES if reparam == "reparam" else 64
    model, guide = two_point_pair(reparam, 1 if subsample else 2, scale)
    if local_samples:  # the particles are the samples of an enumerated guide site
        guide = config_enumerate(guide, num_samples=particles)
        particles = 1
    indices = [[0], [1], [0], [1]] if subsample else [[0, 1]] * 3
    calls = [((), {"subsample": torch.tensor(i)}) for i in indices]
    if elbo is TraceMeanField_ELBO and reparam == "nonreparam":
        # Pyro refuses a score-function site here; the compiled step must refuse alike
        with pytest.raises(NotImplementedError, match="fully reparameterized"):
            CompiledSVI(model, guide, loss=_vectorized(elbo, particles)()).loss_and_grads(
                *calls[0][0], **calls[0][1]
            )
        return
    if elbo is TraceGraph_ELBO:
        path = TRACEGRAPH
    elif local_samples and reparam == "nonreparam":  # the enumerated site's draw is traced
        path = "random op .* depends on traced values"
    else:
        path = COMPILED if reparam == "reparam" else NOT_REPARAM
    results, _ = same_as_pyro(model, guide, _vectorized(elbo, particles), calls, path, caplog)
    if path != COMPILED:
        return  # Pyro's own step, equal to Pyro's above
    # The replayed calls, each example once: a subsampled call's gradient is scaled by the
    # plate's N/B = 2, which Pyro's test divides out.
    last = results[-2:] if subsample else results[-1:]
    total = {name: sum(g[name] for _, g in last) / len(last) for name in EXPECTED}
    _assert_near(total, {k: scale * v for k, v in EXPECTED.items()}, 0.06 * scale)


def nuisance_pair(reparam: str, particles: int | None):
    """Pyro's test_plate pair: the two-point model with sites outside every plate, met in
    another order by the guide, and (``particles``) a particle plate at dim -2 around the
    data plate, entered in either order."""
    normal = normal_of(reparam)

    def plates():
        data = pyro.plate("data", len(DATA), dim=-1)
        if particles is None:
            return contextlib.nullcontext(), data
        return pyro.plate("particles", particles, dim=-2), data

    def model():
        outer, data = plates()
        pyro.sample("nuisance_a", normal(0.0, 1.0))
        with outer, data:
            z = pyro.sample("z", normal(0.0, 1.0))
        pyro.sample("nuisance_b", normal(2.0, 3.0))
        with data, outer:
            pyro.sample("x", normal(z, 1.0), obs=DATA)
        pyro.sample("nuisance_c", normal(4.0, 5.0))

    def guide():
        loc = pyro.param("loc", torch.zeros(len(DATA)))
        scale = pyro.param("scale", torch.tensor([1.0]))
        outer, data = plates()
        pyro.sample("nuisance_c", normal(4.0, 5.0))
        with outer, data:
            pyro.sample("z", normal(loc, scale))
        pyro.sample("nuisance_b", normal(2.0, 3.0))
        pyro.sample("nuisance_a", normal(0.0, 1.0))

    return model, guide


PLATE_ROWS = [
    (Trace_ELBO, "reparam", False),
    (Trace_ELBO, "reparam", True),
    (TraceEnum_ELBO, "reparam", True),
] + [(Trace_ELBO, "nonreparam", False), (TraceGraph_ELBO, "nonreparam", True)]  # fallbacks


@pytest.mark.parametrize(
    "elbo, reparam, vectorized",
    [
        pytest.param(*row, id=f"{row[0].__name__}-{row[1]}-{'vectorized' if row[2] else 'plate'}")
        for row in PLATE_ROWS
    ],
)
def test_plate(elbo, reparam, vectorized, caplog):
    """Pyro's test_plate and test_plate_elbo_vectorized_particles: particles as the user's
    own plate (the gradient divided by their number) or as the ELBO's vectorized particles
    (the ELBO averages), the mean gradient EXPECTED."""
    particles = PARTICLES if reparam == "reparam" else 64
    model, guide = nuisance_pair(reparam, None if vectorized else particles)
    if vectorized:
        make_loss = _vectorized(elbo, particles, nesting=None)  # as Pyro's test: guessed
    else:

        def make_loss():
            return elbo(strict_enumeration_warning=False)

    if elbo is TraceGraph_ELBO:
        path = TRACEGRAPH
    else:
        path = COMPILED if reparam == "reparam" else r"guide site '\w+' \(\w+\) is not repar"
    results, _ = same_as_pyro(model, guide, make_loss, [((), {})] * 3, path, caplog)
    if path == COMPILED:
        grads = results[-1][1]
        if not vectorized:
            grads = {name: g / particles for name, g in grads.items()}
        _assert_near(grads, EXPECTED, 0.06)


# JitTrace_ELBO: Pyro's test marks it xfail (an error of Pyro's JIT, since gone); the compiled
# step takes it as Trace_ELBO
@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO, JitTrace_ELBO])
def test_subsample_gradient_sequential(elbo, caplog):
    """Pyro's test_subsample_gradient_sequential: the plate draws its own subsample (one
    example of two) at every call, the guide indexes its parameter with it, and the ELBO
    runs its particles one after another (4, not Pyro's 10: the recording unrolls them, and
    each costs time and shows nothing new).

    Pyro's test averages 5000 draws to reach EXPECTED within 0.333; here the replayed
    call's gradient is checked against its closed form on its own draws instead (exact,
    and it needs no 500 calls): each particle adds the pathwise gradient of its example,
    scaled by the plate's N/B = 2, divided by the number of particles.
    """

    def model():
        with pyro.plate("data", len(DATA), 1) as ind:
            x = DATA[ind]
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand_by(x.shape))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide():
        loc = pyro.param("loc", lambda: torch.zeros(len(DATA)))
        scale = pyro.param("scale", lambda: torch.tensor([1.0]))
        with pyro.plate("data", len(DATA), 1) as ind:
            pyro.sample("z", dist.Normal(loc[ind], scale))

    particles = 4

    def make_loss():
        return elbo(num_particles=particles, strict_enumeration_warning=False)

    results, _ = same_as_pyro(model, guide, make_loss, [((), {})] * 4, COMPILED, caplog)
    if elbo is TraceMeanField_ELBO:
        return  # its analytic KL has another per-draw gradient; the draws are Pyro's above
    # The last call's draws (seed 3): the guide draws the indices and z, the model replays.
    pyro.set_rng_seed(3)
    loc, scale = pyro.param("loc").detach(), pyro.param("scale").detach()
    expected = {"loc": torch.zeros(2), "scale": torch.zeros(1)}
    for _ in range(particles):
        trace = poutine.trace(guide).get_trace()
        i, z = trace.nodes["data"]["value"], trace.nodes["z"]["value"].detach()
        x, eps = DATA[i], (z - loc[i]) / scale
        expected["loc"][i] -= 2 * (x - 2 * z) / particles
        expected["scale"] -= 2 * ((x - 2 * z) * eps + 1).sum(0, keepdim=True) / particles
    _assert_near(results[-1][1], expected, 1e-9)


# --- test_conjugate_gradients.py: a Gaussian chain whose guide is the exact posterior -----


class GaussianChain:
    """Pyro's conjugate chain z_1 -> ... -> z_N -> x (4 points), with the guide the exact
    posterior q(z_k | z_{k+1}) = N(kappa_k z_{k+1} + loc_k, sigma_k), ``node_reparam`` the
    nodes drawn by a reparameterized sampler whatever ``reparameterized`` says. At the exact
    posterior, log p(x, z) - log q(z) is log p(x) for every z, so the ELBO's gradient is 0."""

    def __init__(self, n: int, node_reparam: tuple[bool, ...]) -> None:
        self.n, self.node_reparam = n, node_reparam
        self.loc0, self.data = torch.tensor([0.2]), torch.tensor([-0.1, 0.03, 0.20, 0.10])
        self.lambdas = [torch.tensor([1.5 * (k + 1) / n]) for k in range(n + 1)]
        tilde = [self.lambdas[0]]  # precision of z_k given the chain above it, x ignored
        for k in range(1, n):
            tilde.append(self.lambdas[k] * tilde[-1] / (self.lambdas[k] + tilde[-1]))
        post = [None] + [self.lambdas[k] + tilde[k - 1] for k in range(1, n)]
        post.append(len(self.data) * self.lambdas[n] + tilde[n - 1])
        self.post = post
        self.kappas = [None] + [self.lambdas[k] / post[k] for k in range(1, n)]
        self.locs = [None] + [self.loc0 * tilde[k - 1] / post[k] for k in range(1, n)]
        self.locs.append(
            self.data.sum() * self.lambdas[n] / post[n] + self.loc0 * tilde[n - 1] / post[n]
        )

    def model(self, reparameterized: bool) -> None:
        z = self.loc0
        for k in range(1, self.n + 1):
            z = pyro.sample(f"z_{k}", dist.Normal(z, self.lambdas[k - 1] ** -0.5))
        with pyro.plate("data", len(self.data)):
            pyro.sample("obs", dist.Normal(z, self.lambdas[self.n] ** -0.5), obs=self.data)

    def guide(self, reparameterized: bool) -> None:
        below = None
        for k in reversed(range(1, self.n + 1)):
            loc = pyro.param(f"loc_q_{k}", self.locs[k].clone())
            log_sig = pyro.param(f"log_sig_q_{k}", -0.5 * torch.log(self.post[k]))
            mean = loc
            if k != self.n:
                mean = pyro.param(f"kappa_q_{k}", self.kappas[k].clone()) * below + loc
            normal = dist.Normal if reparameterized or self.node_reparam[k - 1] else None
            normal = normal or fakes.NonreparameterizedNormal
            below = pyro.sample(
                f"z_{k}",
                normal(mean, log_sig.exp()),
                infer={"baseline": {"use_decaying_avg_baseline": True}},
            )


@pytest.mark.parametrize(
    "elbo, reparameterized, path",
    [
        (Trace_ELBO, True, COMPILED),
        (TraceGraph_ELBO, False, TRACEGRAPH),  # baselines on the score-function nodes
    ],
    ids=["Trace-reparameterized", "TraceGraph-baselines"],
)
def test_conjugate_chain_gradient_is_zero(elbo, reparameterized, path, caplog):
    """Pyro's test_conjugate_gradients (TraceGraph_ELBO, 100000 vectorized particles, zero
    within 0.10); the decaying-average baselines keep their state in the param store, which
    both runs move alike. Where the program runs, its mean gradient is zero too."""
    chain = GaussianChain(3, node_reparam=(False, True, False))
    particles = PARTICLES if path == COMPILED else 64
    kwargs = {"reparameterized": reparameterized}
    results, _ = same_as_pyro(
        chain.model, chain.guide, _vectorized(elbo, particles), [((), kwargs)] * 3, path, caplog
    )
    if path == COMPILED:
        grads = results[-1][1]
        assert len(grads) == 3 * 3 - 1  # loc, log_sig and kappa, no kappa at the chain's end
        _assert_near(grads, {name: torch.zeros_like(g) for name, g in grads.items()}, 0.10)


# --- test_enum.py: discrete sites enumerated in guide and model ----------------------------


def _closed_form_grads(value: torch.Tensor) -> dict[str, torch.Tensor]:
    """d value / d(unconstrained param) for every param in the store."""
    names = list(pyro.get_param_store().keys())
    params = [pyro.param(name).unconstrained() for name in names]
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return {n: g for n, g in zip(names, grads) if g is not None}


@pytest.mark.parametrize("scale", [10.0])
def test_elbo_bern_enumerated_in_the_guide(scale, caplog):
    """Pyro's test_elbo_bern (parallel): the loss and gradient are scale * KL(q || p) and its
    gradient, exactly, the guide's Bernoulli summed out."""

    @poutine.scale(scale=scale)
    def model():
        with pyro.plate("particles", 1):
            pyro.sample("z", dist.Bernoulli(0.25).expand_by([1]))

    @config_enumerate
    @poutine.scale(scale=scale)
    def guide():
        q = pyro.param("q", torch.tensor(0.5))
        with pyro.plate("particles", 1):
            pyro.sample("z", dist.Bernoulli(q).expand_by([1]))

    results, _ = same_as_pyro(
        model, guide, lambda: TraceEnum_ELBO(), [((), {})] * 3, COMPILED, caplog
    )
    q = pyro.param("q")
    kl = scale * kl_divergence(dist.Bernoulli(q), dist.Bernoulli(0.25))
    assert results[-1][0] == pytest.approx(float(kl.detach()), rel=1e-12)
    _assert_near(results[-1][1], _closed_form_grads(kl), 1e-12)


def test_elbo_normal_enumerated_by_sampling_in_the_guide(caplog):
    """Pyro's test_elbo_normal (parallel, num_samples=20000): a reparameterized guide site
    enumerated by 20000 draws; the gradient is that of KL(N(q, 1) || N(0, 1)) within 0.01."""

    def model():
        with pyro.plate("particles", 1):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand_by([1]))

    @config_enumerate(num_samples=20000)
    def guide():
        q = pyro.param("q", torch.tensor(1.0))
        with pyro.plate("particles", 1):
            pyro.sample("z", dist.Normal(q, 1.0).expand_by([1]))

    results, _ = same_as_pyro(
        model, guide, lambda: TraceEnum_ELBO(), [((), {})] * 3, COMPILED, caplog
    )
    kl = kl_divergence(dist.Normal(pyro.param("q"), 1.0), dist.Normal(0.0, 1.0))
    _assert_near(results[-1][1], _closed_form_grads(kl), 0.01)


def test_non_mean_field_bern_bern_gradient(caplog):
    """Pyro's test_non_mean_field_bern_bern_elbo_gradient (parallel): q(z | y) depends on the
    enumerated y; the gradient is the closed form's, exactly."""

    def model():
        with pyro.plate("particles", 1):
            y = pyro.sample("y", dist.Bernoulli(0.33).expand_by([1]))
            pyro.sample("z", dist.Bernoulli(0.55 * y + 0.10))

    @config_enumerate
    def guide():
        q1 = pyro.param("q1", torch.tensor(0.43))
        q2 = pyro.param("q2", torch.tensor(0.27))
        with pyro.plate("particles", 1):
            y = pyro.sample("y", dist.Bernoulli(q1).expand_by([1]))
            pyro.sample("z", dist.Bernoulli(q2 * y + 0.10))

    results, _ = same_as_pyro(
        model, guide, lambda: TraceEnum_ELBO(), [((), {})] * 3, COMPILED, caplog
    )
    q1, q2 = pyro.param("q1"), pyro.param("q2")
    kl = kl_divergence(dist.Bernoulli(q1), dist.Bernoulli(0.33))
    kl = kl + q1 * kl_divergence(dist.Bernoulli(q2 + 0.10), dist.Bernoulli(0.65))
    kl = kl + (1.0 - q1) * kl_divergence(dist.Bernoulli(0.10), dist.Bernoulli(0.10))
    assert results[-1][0] == pytest.approx(float(kl.detach()), rel=1e-12)
    _assert_near(results[-1][1], _closed_form_grads(kl), 1e-12)


def _enum_params() -> None:
    for name, value in [
        ("guide_probs_x", [0.1, 0.9]),
        ("model_probs_x", [0.4, 0.6]),
        ("model_probs_y", [[0.75, 0.25], [0.55, 0.45]]),
        ("model_probs_z", [[0.3, 0.7], [0.2, 0.8]]),
    ]:
        pyro.param(name, torch.tensor(value), constraint=constraints.simplex)


def _probs():
    return [pyro.param(f"model_probs_{k}") for k in "xyz"]


def enum_plate_models(num_masked: int, scale: float):
    """Pyro's test_elbo_enumerate_plate_2: y enumerated inside the data plate (the harder of
    _1 and _2: its enumeration dim meets the plate's), the examples masked from
    ``num_masked`` on, under ``poutine.scale``; the hand model sums y out as a sequential
    plate over the unmasked examples only."""

    def auto_model(data):
        _enum_params()
        probs_x, probs_y, probs_z = _probs()
        x = pyro.sample("x", dist.Categorical(probs_x))
        mask = torch.arange(len(data)) < num_masked
        with poutine.scale(scale=scale), pyro.plate("data", len(data)), poutine.mask(mask=mask):
            y = pyro.sample("y", dist.Categorical(probs_y[x]), infer={"enumerate": "parallel"})
            pyro.sample("z", dist.Categorical(probs_z[y]), obs=data)

    def hand_model(data):
        _enum_params()
        probs_x, probs_y, probs_z = _probs()
        x = pyro.sample("x", dist.Categorical(probs_x))
        with poutine.scale(scale=scale):
            for i in pyro.plate("data", num_masked):
                y = pyro.sample(
                    f"y_{i}", dist.Categorical(probs_y[x]), infer={"enumerate": "parallel"}
                )
                pyro.sample(f"z_{i}", dist.Categorical(probs_z[y]), obs=data[i])

    @config_enumerate
    def guide(data):
        _enum_params()
        pyro.sample("x", dist.Categorical(pyro.param("guide_probs_x")))

    return auto_model, hand_model, guide


def test_elbo_enumerate_plate_masked_and_scaled(caplog):
    """Pyro's test_elbo_enumerate_plate_2 (masked, scale 10): the model's enumerated y and
    the guide's enumerated x, all summed out; the compiled step's loss and gradients are
    Pyro's, and exactly the hand-summed model's."""
    auto_model, hand_model, guide = enum_plate_models(num_masked=2, scale=10.0)
    data = torch.tensor([1, 0, 1])
    calls = [((data,), {})] * 3
    results, _ = same_as_pyro(
        auto_model, guide, lambda: TraceEnum_ELBO(max_plate_nesting=1), calls, COMPILED, caplog
    )
    hand = TraceEnum_ELBO(max_plate_nesting=0).differentiable_loss(hand_model, guide, data)
    assert results[-1][0] == pytest.approx(float(hand.detach()), rel=1e-12)
    _assert_near(results[-1][1], _closed_form_grads(hand), 1e-12)


@pytest.mark.parametrize("num_steps", [2])
def test_elbo_hmm_in_model(num_steps, caplog):
    """Pyro's test_elbo_hmm_in_model (parallel): a Markov chain of states enumerated in the
    model, a mean-field guide enumerated in parallel; the gradient's closed form in the
    number of steps."""
    init_probs = torch.tensor([0.5, 0.5])

    def model(data):
        trans = pyro.param(
            "transition_probs",
            torch.tensor([[0.9, 0.1], [0.1, 0.9]]),
            constraint=constraints.simplex,
        )
        locs = pyro.param("obs_locs", torch.tensor([-1.0, 1.0]))
        scale = pyro.param("obs_scale", torch.tensor(1.0), constraint=constraints.positive)
        x = None
        for i, y in pyro.markov(enumerate(data)):
            x = pyro.sample(f"x_{i}", dist.Categorical(init_probs if x is None else trans[x]))
            pyro.sample(f"y_{i}", dist.Normal(locs[x], scale), obs=y)

    @config_enumerate
    def guide(data):
        probs = pyro.param(
            "mean_field_probs", torch.ones(num_steps, 2) / 2, constraint=constraints.simplex
        )
        for i in pyro.markov(range(num_steps)):
            pyro.sample(f"x_{i}", dist.Categorical(probs[i]))

    calls = [((torch.ones(num_steps),), {})] * 3
    results, _ = same_as_pyro(model, guide, TraceEnum_ELBO, calls, COMPILED, caplog)
    expected = {
        "transition_probs": torch.tensor([[0.2, -0.2], [-0.2, 0.2]]) * (num_steps - 1),
        "obs_locs": torch.tensor([-num_steps, 0.0]),
        "obs_scale": torch.tensor(-float(num_steps)),
        "mean_field_probs": torch.tensor([[0.5, -0.5]] * num_steps),
    }
    _assert_near(results[-1][1], expected, 1e-9)


def test_elbo_hmm_in_guide(caplog):
    """Pyro's test_elbo_hmm_in_guide: the chain enumerated in parallel in the guide and in
    the model. Pyro's test checks golden values that agree with sequential enumeration; here
    the compiled step's gradient is Pyro's sequential one, computed afresh."""
    num_steps = 2
    init_probs = torch.tensor([0.5, 0.5])

    def chain(data, emit: bool) -> None:
        trans = pyro.param(
            "transition_probs",
            torch.tensor([[0.75, 0.25], [0.25, 0.75]]),
            constraint=constraints.simplex,
        )
        x = None
        for i, y in pyro.markov(enumerate(data)):
            x = pyro.sample(f"x_{i}", dist.Categorical(init_probs if x is None else trans[x]))
            if emit:
                emission = pyro.param(
                    "emission_probs",
                    torch.tensor([[0.75, 0.25], [0.25, 0.75]]),
                    constraint=constraints.simplex,
                )
                pyro.sample(f"y_{i}", dist.Categorical(emission[x]), obs=y)

    def model(data):
        chain(data, emit=True)

    def guide(data):
        chain(data, emit=False)

    data = torch.ones(num_steps)
    calls = [((data,), {})] * 3
    results, _ = same_as_pyro(
        model, config_enumerate(guide), TraceEnum_ELBO, calls, COMPILED, caplog
    )
    sequential = config_enumerate(guide, default="sequential")
    TraceEnum_ELBO().loss_and_grads(model, sequential, data)
    _assert_near(results[-1][1], _grads(), 1e-9)


# --- the pairs Pyro's gradient tests leave to test_valid_models: obs_mask, nested plates ---

OBS_MASK = torch.tensor([True, False, True, False])


def obs_mask_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x, obs_mask=OBS_MASK)


def obs_mask_guide(x):
    loc = pyro.param("z_loc", torch.tensor(0.3))
    pyro.sample("z", dist.Normal(loc, 0.8))
    with pyro.plate("data", len(x)):
        x_loc = pyro.param("x_loc", torch.zeros(len(x)))
        pyro.sample("x_unobserved", dist.Normal(x_loc, 1.0))


def nested_subsampled_model():
    with pyro.plate("outer", 5, subsample_size=3, dim=-1) as i:
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        with pyro.plate("inner", 6, subsample_size=2, dim=-2) as j:
            y = pyro.sample("y", dist.Normal(x, 1.0))
            pyro.sample("obs", dist.Normal(y, 0.5), obs=torch.ones(6, 5)[j][:, i])


def nested_subsampled_guide():
    with pyro.plate("outer", 5, subsample_size=3, dim=-1):
        px = pyro.param("px", torch.zeros(5), event_dim=0)
        pyro.sample("x", dist.Normal(px, 1.0))
        with pyro.plate("inner", 6, subsample_size=2, dim=-2):
            py = pyro.param("py", torch.linspace(-1, 1, 30).reshape(6, 5), event_dim=0)
            pyro.sample("y", dist.Normal(py, 0.5))


@pytest.mark.parametrize(
    "model, guide, elbo, args",
    [
        pytest.param(
            obs_mask_model, obs_mask_guide, Trace_ELBO, (torch.arange(4.0),), id="obs_mask"
        ),
        pytest.param(
            obs_mask_model,
            obs_mask_guide,
            _vectorized(TraceMeanField_ELBO, 3),
            (torch.arange(4.0),),
            id="obs_mask-mean-field-vectorized",
        ),
        pytest.param(
            nested_subsampled_model, nested_subsampled_guide, Trace_ELBO, (), id="nested-subsampled"
        ),
        pytest.param(
            nested_subsampled_model,
            nested_subsampled_guide,
            lambda: TraceMeanField_ELBO(
                max_plate_nesting=2, num_particles=3, vectorize_particles=True
            ),
            (),
            id="nested-subsampled-mean-field-vectorized",
        ),
    ],
)
def test_masked_and_nested_plates(model, guide, elbo, args, caplog):
    """``obs_mask`` (the masked entries a latent site the guide draws) and nested plates
    that draw their own subsamples: Pyro's loss and gradients on the same draws."""
    same_as_pyro(model, guide, elbo, [(args, {})] * 3, COMPILED, caplog)


def test_a_differentiable_loss_falls_back_naming_it(caplog):
    """Pyro's DiffTrace_ELBO rows (test_subsample_gradient, test_plate): SVI given
    ``Trace_ELBO().differentiable_loss``, a callable loss. The compiled step takes Pyro's
    step, with Pyro's gradients, and its one log line names the loss it does not take."""
    model, guide = two_point_pair("reparam")
    same_as_pyro(
        model,
        guide,
        lambda: Trace_ELBO(max_plate_nesting=1).differentiable_loss,
        [((), {})] * 3,
        r"Trace_ELBO\.differentiable_loss",
        caplog,
    )
