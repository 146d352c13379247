"""AutoAmortizedNormal held to the checks of Pyro's own autoguide suite
(tests/infer/test_autoguide.py in pyro-ppl/pyro), ported to an amortized guide of local
latents with global ones beside it: scores and replay, ``pyro.factor`` exactness, shapes
under every ELBO with vectorized particles and an outer plate, median and quantiles,
``Predictive``, serialization, the param store, ``AutoGuideList`` parts, discrete sites, and
the exact ELBO of linear-Gaussian models whose posterior the guide can represent."""

from __future__ import annotations

import io
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import (
    SVI,
    JitTrace_ELBO,
    Predictive,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiscreteParallel,
    AutoGuideList,
    AutoNormal,
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_to_sample,
)
from pyro.util import check_model_guide_match

from pyro_gen.vae import AutoAmortizedNormal


def shapes_model(x):
    """A global latent and local latents of every kind of support Pyro's test_shapes uses."""
    a = pyro.sample("a", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))
        c = pyro.sample("c", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
        mask = torch.arange(2) > 0
        pyro.sample("m", dist.Normal(0.0, 1.0).expand([2]).mask(mask).to_event(1))
        pyro.sample("L", dist.LKJCholesky(2, torch.tensor(1.0)))
        pyro.sample("x", dist.Normal(z.sum(-1) + c.sum(-1) + w[..., 0], a), obs=x[:, 0])


LOCAL_SHAPES = {"z": (2,), "w": (3,), "c": (2,), "m": (2,), "L": (2, 2)}


def test_scores_and_replay():
    """As Pyro's test_scores: the guide scores its own draws, the model scores them too."""
    x = torch.randn(4, 3)
    guide = AutoAmortizedNormal(shapes_model, hidden_dims=(8,))
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(shapes_model, guide_trace)).get_trace(x)
    check_model_guide_match(model_trace, guide_trace)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    for name in ["a", *LOCAL_SHAPES]:
        assert torch.equal(guide_trace.nodes[name]["value"], model_trace.nodes[name]["value"])
        assert (
            model_trace.nodes[name]["log_prob"].shape == guide_trace.nodes[name]["log_prob"].shape
        )
        assert guide_trace.nodes[name]["log_prob_sum"].item() != 0.0, name


def test_factor_enters_the_loss_exactly():
    """As Pyro's test_factor: a ``pyro.factor`` of weight f outside and under the data plate
    (N examples) moves the loss by exactly -(1 + N) per unit of f, draws held fixed."""

    def model(x, log_factor):
        pyro.sample("g", dist.Normal(0.0, 1.0))
        pyro.factor("f1", log_factor)
        with pyro.plate("data", x.shape[0]):
            pyro.factor("f2", log_factor.expand(x.shape[0]))
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

    x = torch.randn(3, 2)
    for Elbo in (Trace_ELBO, TraceGraph_ELBO, TraceEnum_ELBO):
        pyro.clear_param_store()
        guide = AutoAmortizedNormal(model, hidden_dims=(4,))
        elbo = Elbo(strict_enumeration_warning=False)
        elbo.loss(model, guide, x, torch.tensor(0.0))  # creates the parameters
        pyro.set_rng_seed(123)
        loss_5 = elbo.loss(model, guide, x, torch.tensor(5.0))
        pyro.set_rng_seed(123)
        loss_4 = elbo.loss(model, guide, x, torch.tensor(4.0))
        assert loss_5 - loss_4 == pytest.approx(-(1 + 3), abs=1e-4), Elbo.__name__


@pytest.mark.parametrize(
    "Elbo", [Trace_ELBO, TraceGraph_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO, JitTrace_ELBO]
)
@pytest.mark.parametrize("num_particles", [1, 3])
def test_shapes_under_every_elbo_and_vectorized_particles(Elbo, num_particles):
    """As Pyro's test_shapes: every ELBO, with vectorized particles, on constrained,
    multivariate, masked and LKJ local sites next to a global one; the loss is finite and
    two steps train (the compiled JitTrace_ELBO runs its recorded program on the second)."""
    x = torch.randn(4, 3)
    guide = AutoAmortizedNormal(shapes_model, hidden_dims=(8,))
    options = dict(num_particles=num_particles, vectorize_particles=True)
    if Elbo is not TraceMeanField_ELBO:
        options["strict_enumeration_warning"] = False
    if Elbo is JitTrace_ELBO:
        options["ignore_jit_warnings"] = True
    svi = SVI(shapes_model, guide, pyro.optim.Adam({"lr": 1e-2}), Elbo(**options))
    losses = [svi.step(x), svi.step(x)]
    assert all(math.isfinite(loss) for loss in losses), losses


def test_jit_trace_elbo_equals_trace_elbo_across_batch_sizes():
    """The compiled JitTrace_ELBO gives Trace_ELBO's loss on the same draws, also for a
    batch size other than the one it was traced with (the LKJ site's event shape is fixed,
    its batch size is not)."""
    guide = AutoAmortizedNormal(shapes_model, hidden_dims=(8,))
    jit, plain = JitTrace_ELBO(ignore_jit_warnings=True), Trace_ELBO()
    # the first call compiles (running the program twice, so drawing other numbers)
    jit.loss_and_grads(shapes_model, guide, torch.randn(4, 3))
    for rows in (4, 6):
        x = torch.randn(rows, 3)
        pyro.set_rng_seed(1)
        compiled = jit.loss_and_grads(shapes_model, guide, x)
        pyro.set_rng_seed(1)
        assert compiled == pytest.approx(plain.loss(shapes_model, guide, x), rel=1e-5)


@pytest.mark.parametrize("sample_shape", [(), (6,), (5, 4)], ids=str)
def test_replay_under_an_outer_plate(sample_shape):
    """As Pyro's test_replay_plates: under outer particle plates the guide's draws get the
    plates' dims on the left and the model replays them with the same shapes."""
    x = torch.randn(5, 3)
    guide = AutoAmortizedNormal(shapes_model, hidden_dims=(8,))
    guide(x)
    with pyro.plate_stack("particles", sample_shape, rightmost_dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(shapes_model, guide_trace)).get_trace(x)
    outer = sample_shape + (1,) if sample_shape else ()
    assert model_trace.nodes["a"]["value"].shape == outer
    for name, event in LOCAL_SHAPES.items():
        shape = sample_shape + (5,) + event
        assert model_trace.nodes[name]["value"].shape == shape, name
        assert torch.equal(model_trace.nodes[name]["value"], guide_trace.nodes[name]["value"])


def test_local_sites_under_an_outer_plate_of_the_model():
    """Local sites may sit under another plate of the model as well, outside the data plate
    (dim -2): the guide gives every example that plate's entries, globals stay global, and
    Predictive's own outer plate goes around both."""

    def model(x):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        with pyro.plate("groups", 2, dim=-2):
            b = pyro.sample("b", dist.Normal(0.0, 1.0))
            with pyro.plate("data", x.shape[0], dim=-1):
                z = pyro.sample("z", dist.Normal(a + b, 1.0))
                pyro.sample("x", dist.Normal(z, 1.0), obs=x.T)

    x = torch.randn(5, 2)
    guide = AutoAmortizedNormal(model, hidden_dims=(4,))
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    assert all(math.isfinite(svi.step(x)) for _ in range(2))
    assert guide.plate_name == "data" and list(guide.local_sites) == ["z"]
    draws = guide(x)
    assert draws["a"].shape == () and draws["b"].shape == (2, 1) and draws["z"].shape == (2, 5)
    samples = Predictive(model, guide=guide, num_samples=3, parallel=True)(x)
    assert samples["z"].shape == (3, 2, 5) and samples["b"].shape == (3, 2, 1)


def prior_only(x):
    """Latents the data do not inform: the posterior is the prior."""
    pyro.sample("g", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("u", dist.Normal(0.0, 1.0))
        pyro.sample("v", dist.LogNormal(0.0, 1.0))
        pyro.sample("b", dist.Beta(2.0, 2.0))


def train(model, guide, *args, steps, lr=0.05, lr_end=0.1, particles=50, Elbo=Trace_ELBO):
    """ClippedAdam from ``lr`` decaying to ``lr_end * lr`` over ``steps``, as in Pyro's suite."""
    elbo = Elbo(num_particles=particles, vectorize_particles=True)
    optim = pyro.optim.ClippedAdam({"lr": lr, "betas": (0.8, 0.99), "lrd": lr_end ** (1 / steps)})
    svi = SVI(model, guide, optim, elbo)
    for _ in range(steps):
        svi.step(*args)
    return elbo


INIT_STRATEGIES = [None, init_to_feasible, init_to_mean, init_to_median, init_to_sample]


@pytest.mark.parametrize("init_loc_fn", INIT_STRATEGIES, ids=lambda f: getattr(f, "__name__", f))
def test_median_and_quantiles_reach_the_prior(init_loc_fn):
    """As Pyro's test_median and test_quantiles, from every init strategy (Pyro runs
    test_median with them too): with the posterior equal to the prior, the median of
    u ~ N(0, 1), v ~ LogNormal(0, 1), b ~ Beta(2, 2) is 0, 1, 0.5 for every example;
    quantiles have the median in the middle and the prior's spread."""
    x = torch.randn(6, 2)
    guide = AutoAmortizedNormal(prior_only, hidden_dims=(4,), init_loc_fn=init_loc_fn)
    train(prior_only, guide, x, steps=150)
    median = guide.median(x)
    assert median["g"].item() == pytest.approx(1.0, abs=0.15)
    assert median["u"] == pytest.approx(torch.zeros(6), abs=0.15)
    assert median["v"] == pytest.approx(torch.ones(6), abs=0.15)
    assert median["b"] == pytest.approx(torch.full((6,), 0.5), abs=0.1)
    quantiles = guide.quantiles([0.1, 0.5, 0.9], x)
    assert set(quantiles) == {"g", "u", "v", "b"}
    for name in ["g", "u", "v", "b"]:
        assert quantiles[name].shape == (3,) + median[name].shape
        assert torch.allclose(quantiles[name][1], median[name])
    z90 = dist.Normal(0.0, 1.0).icdf(torch.tensor(0.9)).item()  # 1.2816
    assert quantiles["u"][2] == pytest.approx(torch.full((6,), z90), abs=0.25)
    assert quantiles["u"][0] == pytest.approx(torch.full((6,), -z90), abs=0.25)
    assert quantiles["v"][2] == pytest.approx(torch.full((6,), math.exp(z90)), rel=0.3)
    assert (quantiles["b"][0] + 0.1 < quantiles["b"][1]).all()
    assert (quantiles["b"][2] < 0.99).all() and (quantiles["b"][0] > 0.01).all()


def test_predictive_with_the_guide():
    """As Pyro's test_predictive: every latent and observed site of the model, one draw per
    sample, serially and in parallel (the guide under Predictive's outer plate)."""
    x = torch.randn(5, 3)
    guide = AutoAmortizedNormal(shapes_model, hidden_dims=(8,))
    guide(x)
    for parallel in (False, True):
        pyro.set_rng_seed(0)
        samples = Predictive(shapes_model, guide=guide, num_samples=4, parallel=parallel)(x)
        assert samples["a"].shape == (4, 1)
        assert samples["x"].shape == (4, 5)
        for name, event in LOCAL_SHAPES.items():
            assert samples[name].shape == (4, 5) + event, (parallel, name)
        assert not torch.allclose(samples["z"][0], samples["z"][1])  # independent draws


@pytest.mark.parametrize("init_loc_fn", INIT_STRATEGIES, ids=lambda f: getattr(f, "__name__", f))
def test_torch_save_after_training_gives_the_same_guide(init_loc_fn):
    """As Pyro's test_serialization (nojit), over its init strategies: ``torch.save`` of the
    whole trained guide."""
    x = torch.randn(4, 3)
    guide = AutoAmortizedNormal(shapes_model, hidden_dims=(8,), init_loc_fn=init_loc_fn)
    train(shapes_model, guide, x, steps=3, particles=1)
    buffer = io.BytesIO()
    torch.save(guide, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    pyro.set_rng_seed(0)
    expected = guide(x)
    pyro.set_rng_seed(0)
    actual = loaded(x)
    assert set(actual) == set(expected)
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
    params = dict(guide.named_parameters())
    loaded_params = dict(loaded.named_parameters())
    assert set(params) == set(loaded_params)
    assert all(torch.equal(params[n], loaded_params[n]) for n in params)


def test_param_store_round_trip_and_clear(tmp_path):
    """``pyro.get_param_store().save``/``load`` restores every parameter the guide trains,
    and after ``pyro.clear_param_store()`` the guide re-registers its own parameters, as
    Pyro's module-based autoguides do (SVI then trains the tensors the guide uses)."""
    x = torch.randn(4, 3)
    guide = AutoAmortizedNormal(shapes_model, hidden_dims=(8,))
    train(shapes_model, guide, x, steps=3, particles=1)
    store = pyro.get_param_store()
    saved = {n: p.detach().clone() for n, p in store.items()}
    store.save(tmp_path / "params.pt")
    pyro.clear_param_store()
    store.load(tmp_path / "params.pt")
    assert set(store.keys()) == set(saved)
    assert all(torch.equal(store[n], saved[n]) for n in saved)

    pyro.clear_param_store()
    before = guide.median(x)
    svi = SVI(shapes_model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(x)
    registered = {id(p) for _, p in pyro.get_param_store().named_parameters()}
    assert registered == {id(p) for p in guide.parameters()}
    assert not torch.allclose(guide.median(x)["z"], before["z"])  # kept training them


@pytest.mark.parametrize("GlobalGuide", [AutoDelta, AutoNormal])
def test_auto_guide_list_with_a_pyro_guide_for_the_globals(GlobalGuide):
    """As Pyro's test_guide_list: another autoguide takes the global site, this one the
    locals; the list trains and its median covers every latent."""
    x = torch.randn(4, 3)
    guide = AutoGuideList(shapes_model)
    guide.append(GlobalGuide(poutine.block(shapes_model, expose=["a"])))
    guide.append(AutoAmortizedNormal(poutine.block(shapes_model, hide=["a"]), hidden_dims=(8,)))
    svi = SVI(shapes_model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    assert all(math.isfinite(svi.step(x)) for _ in range(2))
    assert guide[1].global_guide is None  # the global site is the other part's
    assert set(guide(x)) == set(guide.median(x)) == {"a", *LOCAL_SHAPES}
    if GlobalGuide is AutoNormal:  # (AutoDelta has no quantiles)
        quantiles = guide.quantiles([0.25, 0.75], x)
        assert set(quantiles) == {"a", *LOCAL_SHAPES}
        assert quantiles["z"].shape == (2, 4, 2) and (quantiles["z"][0] < quantiles["z"][1]).all()
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(shapes_model, guide_trace)).get_trace(x)
    check_model_guide_match(model_trace, guide_trace)


def test_discrete_parallel_part_guides_the_discrete_local():
    """As Pyro's test_discrete_parallel: AutoDiscreteParallel guides (enumerates) the
    mixture assignment, this guide the continuous locals, in one AutoGuideList."""
    data = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])

    def mixture(data):
        weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(2)))
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
        with pyro.plate("data", len(data)):
            scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
            assignment = pyro.sample("assignment", dist.Categorical(weights))
            pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)

    guide = AutoGuideList(mixture)
    hidden = poutine.block(mixture, hide=["assignment"])
    guide.append(AutoAmortizedNormal(hidden, hidden_dims=(4,), input_fn=lambda d: d[:, None]))
    guide.append(AutoDiscreteParallel(poutine.block(mixture, expose=["assignment"])))
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    assert math.isfinite(elbo.loss_and_grads(mixture, guide, data))
    encoder = guide[0].net[0].weight
    assert encoder.grad is not None and encoder.grad.abs().sum() > 0


def test_a_discrete_site_is_named_in_the_error():
    """As Pyro's test_discrete_helpful_error, for a global and a local discrete site."""

    def global_discrete(x):
        k = pyro.sample("k", dist.Bernoulli(0.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(k, 1.0))

    with pytest.raises(ValueError, match="discrete site 'k'.*enumerate"):
        AutoAmortizedNormal(global_discrete)(torch.randn(3, 2))


def test_exact_elbo_on_a_linear_gaussian_model():
    """As Pyro's test_exact_batch, per example in several dims: z ~ N(0, I_2),
    x | z ~ N(W z + b, s^2 I_3) with orthogonal columns of W, so the posterior
    N(P^-1 W^T (x - b) / s^2, P^-1), P = I + W^T W / s^2, is diagonal and its mean linear in
    x: the guide with a linear encoder (hidden_dims=()) can represent it exactly, and after
    training the ELBO must equal log p(x) = sum_n log N(x_n; b, W W^T + s^2 I) (closed form)
    within 0.01 nats over 8 examples, and the guide's locs and scales the posterior's."""
    g = torch.Generator().manual_seed(0)
    W = torch.linalg.qr(torch.randn(3, 2, generator=g))[0] * torch.tensor([2.0, 0.7])
    b, s = torch.tensor([0.5, -1.0, 0.0]), 0.6

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, s).to_event(1), obs=x)

    x = torch.randn(8, 3, generator=g) * 1.5
    marginal = dist.MultivariateNormal(b, W @ W.T + s**2 * torch.eye(3))
    log_px = marginal.log_prob(x).sum().item()
    precision = torch.eye(2) + W.T @ W / s**2
    post_cov = torch.linalg.inv(precision)
    post_mean = (x - b) @ W @ post_cov / s**2

    guide = AutoAmortizedNormal(model, hidden_dims=())
    train(model, guide, x, steps=500, lr=0.05, lr_end=0.01, particles=100)
    with torch.no_grad():
        loss = Trace_ELBO(num_particles=4000, vectorize_particles=True).loss(model, guide, x)
    # over 6 seeds the gap was at most 0.002 nats, the locs within 0.02, the scales 2%
    assert -loss == pytest.approx(log_px, abs=0.01)
    median, one_sd = guide.quantiles([0.5, 0.8413447], x)["z"]  # Phi(1) = 0.8413447
    assert median == pytest.approx(post_mean, abs=0.04)
    assert one_sd - median == pytest.approx(post_cov.diagonal().sqrt().expand(8, 2), rel=0.04)
    with torch.no_grad(), pyro.plate("particles", 4000, dim=-2):  # and so do its draws
        z = guide(x)["z"]
    assert z.mean(0) == pytest.approx(post_mean, abs=0.05)
    assert z.std(0) == pytest.approx(post_cov.diagonal().sqrt().expand(8, 2), rel=0.06)


def test_exact_means_with_a_global_latent():
    """As Pyro's test_exact_tree for AutoNormal: g ~ N(0, 1), y_n ~ N(g, 1),
    obs_n ~ N(y_n, 1). The mean-field guide cannot match the joint posterior's
    correlations, but mean-field VI on a Gaussian finds the exact posterior means, and the
    optimal q(y_n) mean (E_q[g] + obs_n) / 2 is linear in obs_n: the linear encoder reaches
    them (Gaussian conditioning in closed form)."""
    data = torch.tensor([0.8, -1.5, 2.0])

    def model(data):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            y = pyro.sample("y", dist.Normal(g, 1.0))
            pyro.sample("obs", dist.Normal(y, 1.0), obs=data)

    # joint precision of (g, y_1..y_3) given the data, and its information vector
    n = len(data)
    precision = torch.zeros(n + 1, n + 1)
    precision[0, 0] = 1.0 + n
    precision[0, 1:] = precision[1:, 0] = -1.0
    precision[1:, 1:] = 2.0 * torch.eye(n)
    mean = torch.linalg.solve(precision, torch.cat([torch.zeros(1), data]))

    guide = AutoAmortizedNormal(model, hidden_dims=(), input_fn=lambda d: d[:, None])
    train(model, guide, data, steps=400, lr=0.05, particles=20)
    median = guide.median(data)
    assert median["g"].item() == pytest.approx(mean[0].item(), abs=0.05)
    assert median["y"] == pytest.approx(mean[1:], abs=0.05)


@pytest.mark.parametrize("init_scale", [1e-1, 1e-4])
def test_init_scale_sets_the_initial_posterior_scales(init_scale):
    """As Pyro's test_init_scale: the root mean square of the initial scales is within a
    factor 2 of ``init_scale`` (the encoder's random weights spread them around it)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([10]).to_event(1))

    x = torch.randn(100, 5)
    guide = AutoAmortizedNormal(model, hidden_dims=(16,), init_scale=init_scale)
    guide(x)
    scale = guide.quantiles([0.5, 0.8413447], x)["z"].diff(dim=0)  # one sd above the median
    rms = scale.pow(2).mean().sqrt().item()
    assert 0.5 * init_scale < rms < 2.0 * init_scale


def test_an_init_scale_below_the_scale_floor_is_refused():
    """Pyro's test_init_scale also asks for 1e-8; the encoder's scales have a floor of 1e-5
    (softplus + 1e-5, for stable gradients), so such a scale is refused by name rather than
    failing with Python's 'math domain error' on the first call."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"init_scale.*floor 1e-05.*got 1e-08"):
        AutoAmortizedNormal(model, init_scale=1e-8)


def sphere_model(x):
    with pyro.plate("data", x.shape[0]):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        direction = pyro.sample("direction", dist.ProjectedNormal(loc))
        pyro.sample("x", dist.Normal(direction, 1.0).to_event(1), obs=x)


def test_a_site_without_a_bijection_is_named_with_the_fix():
    """As Pyro's test_sphere_helpful_error: a ProjectedNormal local (support on the sphere,
    which no bijection reaches) is refused naming the site and ProjectedNormalReparam."""
    with pytest.raises(ValueError, match=r"'direction'.*ProjectedNormalReparam"):
        AutoAmortizedNormal(sphere_model)(torch.randn(3, 3))


def test_a_reparametrized_sphere_site_is_guided():
    """As Pyro's test_sphere_reparam_ok: with ProjectedNormalReparam the guide covers the
    auxiliary Normal site and the model's trace scores the direction."""
    from pyro.infer.reparam import ProjectedNormalReparam

    model = poutine.reparam(sphere_model, {"direction": ProjectedNormalReparam()})
    x = torch.randn(3, 3)
    guide = AutoAmortizedNormal(model, hidden_dims=(4,))
    loss = Trace_ELBO().loss(model, guide, x)
    assert math.isfinite(loss)
    assert set(guide.local_sites) == {"loc", "direction_normal"}
