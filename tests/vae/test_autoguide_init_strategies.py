"""AutoAmortizedNormal under every Pyro init strategy, as Pyro's own autoguide tests hold
its guides (tests/infer/test_autoguide.py in pyro-ppl/pyro): discrete and spherical sites keep
their errors, enumerated sites are left to the ELBO, shapes under every ELBO, subsampling,
exact resume of fit and Pyro's test_subsample_guide."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO
from pyro.infer.autoguide import (
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_to_sample,
    init_to_uniform,
    init_to_value,
)

from pyro_gen.vae import AutoAmortizedNormal
from tests.vae.autoguide_init_model import model

STRATEGIES = [init_to_feasible, init_to_mean, init_to_median, init_to_sample]


@pytest.mark.parametrize("init_loc_fn", STRATEGIES, ids=lambda f: f.__name__)
def test_discrete_and_spherical_sites_keep_their_errors(init_loc_fn):
    """As Pyro's test_discrete_helpful_error and test_sphere_helpful_error, over every
    strategy: the strategy never sees such a site, so the guide's own error (naming the site
    and the way out) is raised, not the strategy's."""

    def discrete(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("k", dist.Categorical(torch.ones(3) / 3))

    def sphere(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("direction", dist.ProjectedNormal(torch.ones(3)))

    with pytest.raises(ValueError, match="discrete site 'k'.*enumerate"):
        AutoAmortizedNormal(discrete, init_loc_fn=init_loc_fn)(torch.randn(3, 2))
    with pytest.raises(ValueError, match="'direction'.*ProjectedNormalReparam"):
        AutoAmortizedNormal(sphere, init_loc_fn=init_loc_fn)(torch.randn(3, 2))
    # and as Pyro's test_sphere_reparam_ok: reparametrized, the auxiliary site is guided
    from pyro.infer.reparam import ProjectedNormalReparam

    reparam = poutine.reparam(sphere, {"direction": ProjectedNormalReparam()})
    guide = AutoAmortizedNormal(reparam, hidden_dims=(4,), init_loc_fn=init_loc_fn)
    assert math.isfinite(Trace_ELBO().loss(reparam, guide, torch.randn(3, 2)))


@pytest.mark.parametrize("init_loc_fn", STRATEGIES, ids=lambda f: f.__name__)
def test_enumerated_sites_are_left_to_the_elbo(init_loc_fn):
    """An enumerated discrete local is not given to the strategy (Pyro's init_to_feasible
    fails on a discrete support) and TraceEnum_ELBO trains the rest."""

    def mixture(x):
        with pyro.plate("data", x.shape[0]):
            k = pyro.sample(
                "k", dist.Categorical(torch.ones(2) / 2), infer={"enumerate": "parallel"}
            )
            s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
            pyro.sample("x", dist.Normal(k.float(), s), obs=x[:, 0])

    x = torch.randn(5, 2)
    guide = AutoAmortizedNormal(mixture, hidden_dims=(4,), init_loc_fn=init_loc_fn)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    assert math.isfinite(elbo.loss_and_grads(mixture, guide, x))
    assert list(guide.local_sites) == ["s"]


@pytest.mark.parametrize("Elbo", [Trace_ELBO, TraceGraph_ELBO, TraceEnum_ELBO])
@pytest.mark.parametrize(
    "init_loc_fn", [*STRATEGIES, init_to_uniform], ids=lambda f: getattr(f, "__name__", "u")
)
def test_shapes_under_every_strategy_and_elbo(init_loc_fn, Elbo):
    """As Pyro's test_shapes over init strategies: the loss is finite, with vectorized
    particles, and two steps train."""
    x = torch.randn(4, 3)
    guide = AutoAmortizedNormal(model, hidden_dims=(8,), init_loc_fn=init_loc_fn)
    elbo = Elbo(num_particles=3, vectorize_particles=True, strict_enumeration_warning=False)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    assert all(math.isfinite(svi.step(x)) for _ in range(2))


@pytest.mark.parametrize("indices", ["drawn", "the model's own"])
def test_model_subsampling_inside_gets_the_values_of_the_examples_it_took(indices):
    """Full data given, the plate subsamples inside the model (the guide encodes the rows the
    plate picks): the per-example values of the first call (here the prior mean, a linear
    function of each example's input, given by a function of the site) belong to the rows
    that plate took, so the linear
    encoder fitted to them maps every example of the full data to its own value. As in
    Pyro's test_subsample_guide, the model's own indices come with create_plates."""
    x_full = torch.randn(40, 3)
    idx = torch.arange(10, 18)

    def full(x):
        size = dict(subsample_size=8) if indices == "drawn" else dict(subsample=idx)
        with pyro.plate("data", x.shape[0], **size) as i:
            pyro.sample("z", dist.Normal(x[i] @ torch.tensor([1.0, -2.0, 0.5]), 1.0))

    create_plates = None if indices == "drawn" else lambda x: pyro.plate("data", 40, subsample=idx)
    # a function of the user's: its values are kept per example (init_to_mean's, a
    # strategy's, would be the first example's for all)
    init_loc_fn = lambda site: site["fn"].mean  # noqa: E731
    guide = AutoAmortizedNormal(
        full, hidden_dims=(), init_loc_fn=init_loc_fn, create_plates=create_plates
    )
    guide.setup(x_full)
    want = x_full @ torch.tensor([1.0, -2.0, 0.5])
    assert torch.allclose(guide.encode(x_full)["z"], want, atol=1e-4)


def test_minibatch_with_the_models_own_indices():
    """The model given a minibatch and its indices (subsample=idx): per-example values
    meet the minibatch's examples, the loss carries Pyro's N/B scale."""

    def minibatch(x, idx):
        pyro.sample("g", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", 40, subsample=idx):
            pyro.sample("s", dist.Gamma(2.0, 1.0))

    x, idx = torch.randn(8, 3), torch.arange(8, 16)
    value = torch.linspace(0.5, 4.0, 8)
    guide = AutoAmortizedNormal(
        minibatch, hidden_dims=(16,), init_loc_fn=init_to_value(values={"s": value})
    )
    guide.setup(x, idx)
    assert torch.allclose(guide.median(x, idx)["s"], value, atol=1e-4)
    assert poutine.trace(guide).get_trace(x, idx).nodes["s"]["scale"] == 40 / 8


def test_fit_resumes_exactly_and_stays_compiled_with_an_init_loc_fn(tmp_path, caplog):
    """``fit``'s compiled step records the guide with its fitted location head (no fallback
    to plain SVI), and a run stopped after 3 steps resumes from its checkpoint to the
    parameters of 6 straight steps, although a fresh guide's init_to_sample draws other
    starting values (the checkpoint's are loaded over them)."""
    from pyro_gen.infer import fit

    x = torch.randn(16, 3)

    def model(x):  # as above, less the LKJCholesky local, which sends the compiled step
        # to plain SVI with or without init_loc_fn (its sampler is data-dependent)
        a = pyro.sample("a", dist.LogNormal(1.0, 0.5))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(3.0, 1.0).expand([2]).to_event(1))
            s = pyro.sample("s", dist.Gamma(4.0, 2.0))
            w = pyro.sample("w", dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0])))
            pyro.sample("x", dist.Normal(z.sum(-1) + s + w[..., 0], a), obs=x[:, 0])

    def run(directory, steps, seed):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = AutoAmortizedNormal(model, hidden_dims=(8,), init_loc_fn=init_to_sample)
        fit(
            model,
            x,
            guide=guide,
            steps=steps,
            batch_size=8,
            checkpoint_dir=directory,
            optim=pyro.optim.Adam({"lr": 0.05}),
            progress=False,
        )
        return {n: p.detach().clone() for n, p in pyro.get_param_store().items()}, guide

    with caplog.at_level("INFO", logger="pyro_gen"):
        straight, guide = run(tmp_path / "straight", 6, seed=0)
    assert "recorded the ELBO step" in caplog.text
    assert "plain Pyro SVI" not in caplog.text, caplog.text
    assert "AutoAmortizedNormal.net$$$2.weight" in straight
    run(tmp_path / "resumed", 3, seed=0)
    resumed, _ = run(tmp_path / "resumed", 6, seed=123)  # as a new process would
    assert sorted(resumed) == sorted(straight)
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name


@pytest.mark.parametrize(
    "init_loc_fn", [None, init_to_mean, init_to_median], ids=["default", "mean", "median"]
)
def test_subsample_guide_as_in_pyros_suite(init_loc_fn):
    """Pyro's test_subsample_guide (the model of its easyguide tutorial), from its init
    strategies: a global drift, a chain of local states per example, minibatches of a
    plate of 50 with the model's own indices (create_plates). Two epochs train."""

    def model(batch, subsample, full_size):
        drift = pyro.sample("drift", dist.LogNormal(-1.0, 0.5))
        with pyro.plate("data", full_size, subsample=subsample):
            z = 0.0
            for t in range(len(batch)):
                z = pyro.sample(f"state_{t}", dist.Normal(z, drift))
                pyro.sample(f"obs_{t}", dist.Bernoulli(logits=z), obs=batch[t])

    def create_plates(batch, subsample, full_size):
        return pyro.plate("data", full_size, subsample=subsample)

    data = (torch.rand(8, 50) < 0.5).float()
    guide = AutoAmortizedNormal(
        model,
        hidden_dims=(8,),
        input_fn=lambda batch, subsample, full_size: batch.T,
        init_loc_fn=init_loc_fn,
        create_plates=create_plates,
    )
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(2):
        for begin in range(0, 50, 20):
            subsample = torch.arange(begin, min(50, begin + 20))
            assert math.isfinite(svi.step(data[:, subsample], subsample, full_size=50))
    if init_loc_fn is init_to_mean:  # the states' prior mean is 0 (a chain from 0)
        pyro.clear_param_store()
        fresh = AutoAmortizedNormal(
            model,
            hidden_dims=(8,),
            input_fn=lambda batch, subsample, full_size: batch.T,
            init_loc_fn=init_loc_fn,
            create_plates=create_plates,
        )
        start = fresh.median(data[:, :20], torch.arange(20), 50)
        assert start["drift"].item() == pytest.approx(math.exp(-1.0 + 0.5**2 / 2), rel=1e-5)
        assert all(not start[f"state_{t}"].any() for t in range(8))
