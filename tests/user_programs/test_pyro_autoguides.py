"""Every Pyro autoguide a user might pass as ``guide=`` to :func:`pyro_gen.infer.fit` and the
evaluation helpers, on small plain-Pyro models written as a Pyro user writes them: a
Bayesian regression (global latents only), a hierarchical model (global latents and one
latent per group, all groups in every call) and a model with global latents over a data
plate that subsamples itself (``pyro.plate("data", N, subsample_size=B)``) with a local
latent.

Each check is against Pyro's own behaviour: ``fit(compile=False)`` takes ``SVI.step``'s
steps bit for bit; the default compiled step agrees to float tolerance or falls back to
Pyro's step saying so once; a run resumed in a fresh guide (as a new process builds it)
equals the straight run bit for bit; the ELBO and IWAE bounds are finite, ordered, and do
not depend on the evaluation batch size; ``pyro.infer.Predictive`` samples every site.
"""

from __future__ import annotations

import functools
import logging
import warnings

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.contrib.easyguide import easy_guide
from pyro.distributions.transforms import ComposeTransformModule, iterated
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer import autoguide as ag
from pyro.poutine.util import site_is_subsample

import pyro_gen.transforms as T
from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from pyro_gen.vae import AutoAmortizedNormal
from tests.user_programs.test_user_programs import (
    _store,
    assert_same_store,
    resumed_and_straight,
)

# ---------------------------------------------------------------------------------------
# models

_g = torch.Generator().manual_seed(0)
X = torch.randn(16, 3, generator=_g)
Y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.3 * torch.randn(16, generator=_g)
SCHOOL_Y = torch.tensor([2.0, -1.0, 0.5, 3.0])
SCHOOL_SIGMA = torch.tensor([1.0, 1.5, 0.8, 1.2])
POINTS = torch.randn(20, 2, generator=_g) + 1.0
SUBSAMPLE = 5


def regression(x: torch.Tensor, y: torch.Tensor) -> None:
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        # (x * w).sum(-1) rather than x @ w broadcasts over a particle plate
        pyro.sample("y", dist.Normal((x * w).sum(-1) + b, sigma), obs=y)


def hierarchy(y: torch.Tensor, sigma: torch.Tensor) -> None:
    # HalfNormal rather than the eight schools' HalfCauchy: the messenger guides start at the
    # prior mean (init_to_mean), infinite for a HalfCauchy, and Pyro's SVI then takes NaN
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfNormal(2.0))
    with pyro.plate("schools", y.shape[0]):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def subsampled(x: torch.Tensor) -> None:
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 2.0).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0], subsample_size=SUBSAMPLE) as ind:
        z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, scale).to_event(1), obs=x[ind])


MODELS = {
    "regression": (regression, (X, Y)),
    "hierarchy": (hierarchy, (SCHOOL_Y, SCHOOL_SIGMA)),
    "subsampled": (subsampled, (POINTS,)),
}
LOCAL = {"regression": [], "hierarchy": ["theta"], "subsampled": ["z"]}

# ---------------------------------------------------------------------------------------
# guides, built as a user builds them


def _flow(helper, **kw):
    # AutoNormalizingFlow calls this with the latent dimension
    return functools.partial(iterated, 2, helper, **kw)


def _mixed_flow(dim: int) -> ComposeTransformModule:
    # ActNorm initializes from its first input: on a resume, from the checkpoint instead
    return ComposeTransformModule(
        [T.ActNorm(dim), T.affine_coupling(dim, hidden_dims=(8,)), T.permute(dim),
         T.affine_coupling(dim, hidden_dims=(8,))]
    )  # fmt: skip


def _easyguide(model):
    @easy_guide(model)
    def guide(self, *args):
        group = self.group(match=".*")
        loc = pyro.param("eg_loc", lambda: torch.zeros(group.event_shape))
        scale = pyro.param(
            "eg_scale",
            lambda: torch.full(group.event_shape, 0.1),
            constraint=dist.constraints.positive,
        )
        group.sample("joint", dist.Normal(loc, scale).to_event(1))

    return guide


def _amortized_list(model, name):
    """Local latents from pyro_gen's encoder guide, global ones from an AutoNormal, blocked
    with ``expose=`` as Pyro's AutoGuideList examples do."""
    local = LOCAL[name]
    guide = ag.AutoGuideList(model)
    guide.append(AutoAmortizedNormal(poutine.block(model, expose=local), hidden_dims=(8,)))
    guide.append(ag.AutoNormal(poutine.block(model, hide=local)))
    return guide


GUIDES = {
    "AutoNormal": lambda m, n: ag.AutoNormal(m),
    "AutoDiagonalNormal": lambda m, n: ag.AutoDiagonalNormal(m),
    "AutoMultivariateNormal": lambda m, n: ag.AutoMultivariateNormal(m),
    "AutoLowRankMultivariateNormal": lambda m, n: ag.AutoLowRankMultivariateNormal(m, rank=2),
    "AutoIAFNormal": lambda m, n: ag.AutoIAFNormal(m, num_transforms=2),
    "flow:inverse_autoregressive": lambda m, n: ag.AutoNormalizingFlow(
        m, _flow(T.inverse_autoregressive, hidden_dims=[16])
    ),
    "flow:ActNorm+permute+affine_coupling": lambda m, n: ag.AutoNormalizingFlow(m, _mixed_flow),
    "flow:spline_coupling": lambda m, n: ag.AutoNormalizingFlow(
        m, _flow(T.spline_coupling, hidden_dims=(8,))
    ),
    "AutoDelta": lambda m, n: ag.AutoDelta(m),
    "AutoLaplaceApproximation": lambda m, n: ag.AutoLaplaceApproximation(m),
    "AutoStructured": lambda m, n: ag.AutoStructured(m),
    "AutoNormalMessenger": lambda m, n: ag.AutoNormalMessenger(m),
    "AutoHierarchicalNormalMessenger": lambda m, n: ag.AutoHierarchicalNormalMessenger(m),
    "AutoRegressiveMessenger": lambda m, n: ag.AutoRegressiveMessenger(m),
    "easyguide": lambda m, n: _easyguide(m),
    "AutoGuideList(amortized+AutoNormal)": _amortized_list,
}
# an encoder needs local latents; the regression has none
CASES = [
    (g, m) for g in GUIDES for m in MODELS if not (g.startswith("AutoGuideList") and not LOCAL[m])
]
# evaluation: global latents only (batch sizes compared), and global with local ones
AFTER_FIT = [(g, m) for g, m in CASES if m != "hierarchy"]
# Pyro's point-mass guides: no density, so no IWAE bound (refused, see below)
POINT_MASS = {"AutoDelta", "AutoLaplaceApproximation"}


def _build(guide_name: str, model_name: str, call_first: bool = True):
    """A fresh guide; called once on the data when ``call_first`` (as one does to inspect
    an autoguide), so that its parameters exist before the first step: fit's own warm-up
    trace would otherwise create them and move the RNG stream (fit's docstring)."""
    model, data = MODELS[model_name]
    guide = GUIDES[guide_name](model, model_name)
    if call_first:
        guide(*data)
    return model, data, guide


def _fit(guide_name, model_name, steps, compile, call_first=True, **kw):
    # the data as one batch per epoch, the batches SVI steps on: tensor data would be
    # shuffled, drawing a permutation per epoch (fit's docstring)
    pyro.clear_param_store()
    model, data, guide = _build(guide_name, model_name, call_first)
    fit(model, [data], guide=guide, steps=steps, optim=pyro.optim.Adam({"lr": 0.02}),
        compile=compile, progress=False, **kw)  # fmt: skip
    return guide


def _svi(guide_name, model_name, steps):
    pyro.clear_param_store()
    model, data, guide = _build(guide_name, model_name)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    return [svi.step(*data) for _ in range(steps)]


# ---------------------------------------------------------------------------------------
# fit takes Pyro's SVI steps


@pytest.mark.parametrize("guide_name,model_name", CASES)
def test_plain_fit_takes_pyros_svi_steps(guide_name, model_name):
    """One batch per epoch, the same seed: ``fit(compile=False)`` leaves the parameters
    ``SVI.step`` leaves, bit for bit (the subsample indices, the guide's draws and every
    Adam update included)."""
    pyro.set_rng_seed(0)
    losses = _svi(guide_name, model_name, 4)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    expected = _store()
    pyro.set_rng_seed(0)
    _fit(guide_name, model_name, 4, False)
    assert_same_store(_store(), expected, exact=True)


# the compiled step records each guide's program once (3-5 s each): a spread of kinds
COMPILED = [
    ("easyguide", "regression"),
    ("AutoRegressiveMessenger", "hierarchy"),
    ("AutoGuideList(amortized+AutoNormal)", "subsampled"),
]


@pytest.mark.parametrize("guide_name,model_name", COMPILED)
def test_default_fit_agrees_with_pyros_svi_or_says_it_fell_back(guide_name, model_name, caplog):
    pyro.set_rng_seed(0)
    _svi(guide_name, model_name, 4)
    expected = _store()
    pyro.set_rng_seed(0)
    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        _fit(guide_name, model_name, 4, None)
    fallbacks = [r.getMessage() for r in caplog.records if "plain Pyro SVI" in r.getMessage()]
    assert len(fallbacks) <= 1, fallbacks
    assert_same_store(_store(), expected, exact=bool(fallbacks))


# ---------------------------------------------------------------------------------------
# resume in a fresh guide


def _resumed_and_straight(guide_name, model_name, tmp_path, compile, steps=6, stop=3):
    """``steps`` in one run, and ``stop`` then on to ``steps`` from the checkpoint as a new
    process does it: an empty param store, a new guide object never called (its parameters
    are created lazily), another RNG state."""

    def run(directory, n):
        _fit(guide_name, model_name, n, compile, call_first=False, checkpoint_dir=directory)
        return _store()

    return resumed_and_straight(run, tmp_path, steps, stop)


@pytest.mark.parametrize("guide_name", list(GUIDES))
def test_a_run_resumes_exactly_in_a_fresh_guide(guide_name, tmp_path):
    """On the subsampled model, the hardest case: the resumed run must also draw the
    subsample indices the straight run drew."""
    resumed, straight = _resumed_and_straight(guide_name, "subsampled", tmp_path, False)
    assert_same_store(resumed, straight, exact=True)


def test_a_compiled_run_resumes_exactly_in_a_fresh_guide(tmp_path):
    """The default step, on a guide whose parameters appear on its first call."""
    resumed, straight = _resumed_and_straight("AutoNormal", "regression", tmp_path, None, 4, 2)
    assert_same_store(resumed, straight, exact=True)


# ---------------------------------------------------------------------------------------
# evaluation and prediction after fit


def _trained(guide_name, model_name, steps=10):
    pyro.set_rng_seed(0)
    guide = _fit(guide_name, model_name, steps, False)
    return MODELS[model_name] + (guide,)


def _bounds(model, data, guide, draws, **kw):
    """The ELBO and the IWAE bound from the same ``draws`` guide draws (the same seed)."""
    with warnings.catch_warnings():
        # AutoDelta's point-mass warning; AutoContinuous guides on the subsampled plate
        # (an unpacked latent of the subsample's size) do not broadcast over particles
        warnings.simplefilter("ignore")
        pyro.set_rng_seed(1)
        elbo = evaluate_elbo(model, data, guide=guide, num_particles=draws, **kw)
        pyro.set_rng_seed(1)
        iwae = iwae_log_likelihood(model, data, guide=guide, num_samples=draws, **kw)
    return elbo, iwae


@pytest.mark.parametrize("guide_name,model_name", AFTER_FIT)
def test_bounds_and_predictive_after_fit(guide_name, model_name):
    """After ``fit``: the IWAE bound of the draws the ELBO averages is at least their ELBO
    (Jensen's inequality, draw for draw), both finite; with global latents only, the whole
    data set in one batch and in batches of 4 give the same estimates (each particle's
    draw is held on every batch); ``Predictive(model, guide=...)`` draws every site.
    Pyro's point-mass guides have no density: their IWAE is refused with one error that
    says so, and what to do."""
    model, data, guide = _trained(guide_name, model_name)
    if guide_name in POINT_MASS:
        with pytest.raises(ValueError, match="point mass"):
            _bounds(model, data, guide, 8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            elbo = evaluate_elbo(model, data, guide=guide, num_particles=8)
        assert torch.isfinite(torch.tensor(elbo)), elbo
    else:
        elbo, iwae = _bounds(model, data, guide, 8)
        assert torch.isfinite(torch.tensor([elbo, iwae])).all(), (elbo, iwae)
        assert iwae >= elbo - 1e-5, (elbo, iwae)
        if model_name == "regression":
            in_fours = _bounds(model, data, guide, 8, batch_size=4)
            torch.testing.assert_close(torch.tensor(in_fours), torch.tensor([elbo, iwae]))

    samples = Predictive(model, guide=guide, num_samples=3)(*data)
    trace = poutine.trace(model).get_trace(*data)
    sites = [
        n for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)
    ]
    assert sorted(samples) == sorted(sites)
    for name, value in samples.items():
        assert value.shape[0] == 3 and torch.isfinite(value).all(), name


def test_laplace_approximation_after_fit_is_evaluated():
    """AutoLaplaceApproximation trains the MAP point; ``.laplace_approximation()`` turns it
    into an AutoMultivariateNormal at that point, which both bounds and Predictive take."""
    pyro.set_rng_seed(0)
    model, data = MODELS["regression"]
    guide = ag.AutoLaplaceApproximation(model)
    fit(model, [data], guide=guide, steps=100, optim=pyro.optim.Adam({"lr": 0.1}),
        compile=False, progress=False)  # fmt: skip
    laplace = guide.laplace_approximation(*data)
    assert isinstance(laplace, ag.AutoMultivariateNormal)
    torch.testing.assert_close(laplace.loc, guide.loc)
    elbo, iwae = _bounds(model, data, laplace, 8)
    assert torch.isfinite(torch.tensor([elbo, iwae])).all(), (elbo, iwae)
    assert iwae >= elbo - 1e-5, (elbo, iwae)
    samples = Predictive(model, guide=laplace, num_samples=3)(*data)
    assert samples["w"].shape[:1] == (3,) and torch.isfinite(samples["w"]).all()


@pytest.mark.parametrize("guide_name", ["AutoNormal", "AutoNormalMessenger", "easyguide"])
@pytest.mark.parametrize("estimator", [evaluate_elbo, iwae_log_likelihood])
def test_a_guide_with_a_parameter_per_example_is_not_evaluated_in_slices(guide_name, estimator):
    """A latent per school guided by a parameter per school (not amortized) fits the four
    schools it was trained on and no slice of them, as in Pyro: evaluating in batches of 3
    is one error naming the batch size that works (Pyro's own is a shape error), and the
    whole data set is scored."""
    model, data, guide = _trained(guide_name, "hierarchy")
    with pytest.raises(ValueError, match=r"batch of 3 of the 4 examples.*batch_size=4"):
        estimator(model, data, guide=guide, batch_size=3)
    assert torch.isfinite(torch.tensor(estimator(model, data, guide=guide, batch_size=4)))


@pytest.mark.parametrize("block", ["expose", "hide"])
def test_an_amortized_list_part_starts_at_its_init_values(block):
    """In the list, AutoAmortizedNormal places init values by the examples the plate drew.
    Blocked with ``expose=`` its model hides those indices: one error saying to block with
    ``hide=``; so blocked, every example starts at z's prior mean, common to them (loc,
    hidden from the part, is a prior draw there, as in Pyro's blocked autoguides), where
    the encoder's random weights would spread them."""
    model, data = MODELS["subsampled"]
    guide = ag.AutoGuideList(model)
    part = poutine.block(
        model, **({"expose": ["z"]} if block == "expose" else {"hide": ["loc", "scale"]})
    )
    guide.append(AutoAmortizedNormal(part, hidden_dims=(8,), init_loc_fn=ag.init_to_mean))
    guide.append(ag.AutoNormal(poutine.block(model, hide=["z"]), init_loc_fn=ag.init_to_mean))
    if block == "expose":
        with pytest.raises(ValueError, match=r"hides the indices.*hide=\[\.\.\.\]"):
            guide(*data)
        return
    guide(*data)
    z = guide.median(*data)["z"]
    assert z.shape == POINTS.shape
    torch.testing.assert_close(z, z[:1].expand_as(z), atol=1e-5, rtol=0)
    assert z.abs().sum() > 0
