"""CompiledSVI's gradients on Pyro's test_gradient.py pair (z_i ~ N(0, 1), x_i ~ N(z_i, 1)):
plates with subsampling, a particle plate nested around a data plate, ``poutine.scale``,
vectorized and sequential particles, reparameterized and score-function guide sites,
``TraceMeanField_ELBO``'s analytic KL, a guide site enumerated by sampling and a
differentiable loss, against Pyro and, per draw or averaged over vectorized particles, the
pathwise and score-function closed forms.

The pairs are written again here (read from Pyro, not copied) and run through
:class:`~pyro_gen.infer.compiled.CompiledSVI` (``fit``'s default step) and through Pyro's
``loss.loss_and_grads``, each call on the same seed from the same param store
(pyro_gradient_checks.same_as_pyro): the loss and every parameter's gradient must be Pyro's,
to float rounding, and the step must take the path the pair states (its recorded program, or
Pyro's step after one log line saying why)."""

from __future__ import annotations

import contextlib

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions.testing import fakes
from pyro.infer import (
    JitTrace_ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    config_enumerate,
)

from pyro_gen.infer.compiled import CompiledSVI
from tests.infer.pyro_gradient_checks import (
    COMPILED,
    DATA,
    EXPECTED,
    NOT_REPARAM,
    PARTICLES,
    TRACEGRAPH,
    _assert_near,
    _vectorized,
    same_as_pyro,
)

# float64 throughout (tests/conftest.py, whose autouse fixture also clears the param store)
pytestmark = pytest.mark.usefixtures("float64_default")


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
