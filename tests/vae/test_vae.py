"""The VAE model/guide pair: protocol, swappable parts, gradients reaching every
parameter, vectorized IWAE, conditional and hierarchical variants, builders, errors."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_gen.vae import (
    LATENT,
    OBS,
    VAE,
    AutoAmortizedNormal,
    HierarchicalVAE,
    PerExamplePosterior,
    build_vae,
    interpolate,
    iwae,
    latent_site,
    make_posterior,
    make_prior,
)

SHAPE = (4, 4)


def data(n=6):
    return torch.rand(n, *SHAPE).round()


def small_vae(prior="normal", guide="normal", **kw):
    return VAE(
        SHAPE,
        z_dim=3,
        hidden_dim=8,
        prior=make_prior(prior, 3, SHAPE, num_components=5),
        **(
            {"guide": "auto"}
            if guide == "auto"
            else {"posterior": make_posterior(guide, SHAPE, 3, 8)}
        ),
        **kw,
    )


def test_default_is_the_standard_vae():
    vae = VAE()
    assert vae.decoder.net[0].in_features == 50 and vae.decoder.net[0].out_features == 400
    assert vae.posterior.encoder.trunk[0].in_features == 784
    assert isinstance(vae.posterior.encoder.trunk[1], torch.nn.Softplus)
    tr = poutine.trace(vae.guide).get_trace(torch.rand(2, 28, 28).round())
    assert tr.nodes[LATENT]["value"].shape == (2, 50)
    mt = poutine.trace(poutine.replay(vae.model, trace=tr)).get_trace(torch.rand(2, 28, 28))
    assert mt.nodes[OBS]["fn"].event_shape == (28, 28)
    assert vae.sample(5).shape == (5, 28, 28)


PARTS = [
    (p, g)
    for p in ["normal", "mog", "vamp", "flow"]
    for g in ["normal", "iaf", "auto"]
    if not (p == "vamp" and g == "auto")
]


@pytest.mark.parametrize("prior,guide", PARTS)
def test_gradients_reach_every_parameter_and_params_registered_once(prior, guide):
    vae = small_vae(prior, guide)
    with torch.no_grad():  # leave zero-initialized layers (identity flows) behind
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = data()
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # every module parameter is in the param store exactly once (no double updates)
    stored = [p for _, p in pyro.get_param_store().named_parameters()]
    ids = [id(t) for t in stored]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in vae.parameters()}
    # one SVI step with the vectorized IWAE bound runs, and sampling works
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), iwae(4))
    assert torch.isfinite(torch.tensor(svi.step(x)))
    assert vae.sample(2).shape == (2, *SHAPE)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian_learned", "categorical"])
def test_likelihoods_train_and_sample(likelihood):
    vae = VAE(SHAPE, z_dim=2, hidden_dim=8, likelihood=likelihood)
    x = torch.rand(5, *SHAPE)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), TraceMeanField_ELBO())
    losses = [svi.step(x) for _ in range(15)]
    assert losses[-1] < losses[0]
    s = vae.sample(3, mean=False)
    assert s.shape == (3, *SHAPE) and s.is_floating_point()
    assert vae.reconstruct(x).shape == x.shape


def test_guide_site_matches_model_and_meanfield_equals_mc_in_expectation():
    vae = small_vae()
    x = data(20)
    mf = TraceMeanField_ELBO(num_particles=500, vectorize_particles=True, max_plate_nesting=1)
    mc = Trace_ELBO(num_particles=500, vectorize_particles=True, max_plate_nesting=1)
    a, b = mf.loss(vae.model, vae.guide, x), mc.loss(vae.model, vae.guide, x)
    assert abs(a - b) / 20 < 0.1


def test_conditional_vae_passes_label_everywhere():
    vae = VAE(SHAPE, z_dim=2, hidden_dim=8, num_classes=3)
    x, y = data(4), torch.tensor([0, 1, 2, 1])
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, y=y)
    loss.backward()
    # the label columns of encoder and decoder inputs receive gradient
    assert vae.decoder.net[0].weight.grad[:, 2:].abs().sum() > 0
    assert vae.posterior.encoder.trunk[0].weight.grad[:, -3:].abs().sum() > 0
    s0 = vae.sample(2, y=torch.tensor([0, 0]))
    s1 = vae.sample(2, y=torch.tensor([2, 2]))
    assert s0.shape == (2, *SHAPE) and not torch.allclose(s0, s1)
    assert not torch.allclose(s0[0], s0[1])  # a fresh z per sample
    with pytest.raises(ValueError, match="y="):
        vae.model(x)
    with pytest.raises(ValueError, match="not conditional"):
        small_vae().model(x, y=y)


def test_per_example_guide_indexes_its_parameters():
    n = 10
    x = data(n)
    vae = VAE(SHAPE, z_dim=2, hidden_dim=8, posterior=PerExamplePosterior(n, 2))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    idx = torch.tensor([1, 3, 5])
    svi.step(x[idx], idx=idx)
    moved = (vae.posterior.locs.detach() != 0).any(-1)
    assert moved[idx].all() and not moved[[0, 2, 4]].any()
    with pytest.raises(ValueError, match="idx"):
        vae.guide(x)


@pytest.mark.parametrize("inference", ["bottom_up", "top_down"])
def test_hierarchical_vae(inference):
    hvae = HierarchicalVAE(SHAPE, z_dims=(3, 2, 2), hidden_dim=8, inference=inference)
    x = data()
    tr = poutine.trace(hvae.guide).get_trace(x)
    assert [tr.nodes[latent_site(i)]["value"].shape[-1] for i in (1, 2, 3)] == [3, 2, 2]
    loss = Trace_ELBO().differentiable_loss(hvae.model, hvae.guide, x)
    loss.backward()
    for name, p in hvae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    loss = iwae(3).loss(hvae.model, hvae.guide, x)
    assert torch.isfinite(torch.tensor(loss))
    assert hvae.sample(4).shape == (4, *SHAPE)
    assert hvae.encode(x).shape == (6, 3) and hvae.reconstruct(x).shape == x.shape
    assert interpolate(hvae, x[0], x[1], 3).shape == (3, *SHAPE)


def test_build_vae_covers_cli_options():
    for prior in ["normal", "mog", "vamp", "flow"]:
        for guide in ["normal", "iaf", "auto"]:
            if prior == "vamp" and guide == "auto":
                continue
            for likelihood in ["bernoulli", "gaussian", "categorical"]:
                m = build_vae(SHAPE, prior, guide, 1, likelihood, z_dim=2, hidden_dim=8)
                assert isinstance(m, VAE)
    h = build_vae(SHAPE, prior="mog", layers=2, z_dim=4, hidden_dim=8)
    assert isinstance(h, HierarchicalVAE) and h.z_dims == (4, 2)
    x = data()
    assert torch.isfinite(Trace_ELBO().differentiable_loss(h.model, h.guide, x))
    auto = build_vae(SHAPE, layers=2, guide="auto", z_dim=4, hidden_dim=8)
    assert isinstance(auto.guide, AutoAmortizedNormal) and auto.encoders is None
    assert torch.isfinite(Trace_ELBO().differentiable_loss(auto.model, auto.guide, x))
    with pytest.raises(ValueError, match="IAF posterior family is for one latent layer"):
        build_vae(SHAPE, guide="iaf", layers=2)
    with pytest.raises(ValueError):
        build_vae(SHAPE, layers=0)


def test_state_dict_round_trip_including_auto_guide():
    a, b = small_vae("mog", "auto"), small_vae("mog", "auto")
    b.load_state_dict(a.state_dict())
    x = data()
    assert torch.allclose(a.encode(x), b.encode(x))
    assert torch.allclose(a.decode(a.encode(x)), b.decode(b.encode(x)))


@pytest.mark.parametrize("guide", ["normal", "auto"])
def test_a_vae_moved_to_float64_trains_and_encodes_in_float64(guide):
    """``vae.double()`` as a Pyro user does for a float64 program: the ``"auto"`` guide was
    built on float32 rows and used to feed them to its float64 encoder (a dtype error)."""
    pyro.clear_param_store()
    vae = small_vae("normal", guide).double()
    x = data().double()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    assert torch.isfinite(torch.tensor(svi.step(x)))
    assert {v.dtype for v in pyro.get_param_store().values()} == {torch.float64}
    assert vae.encode(x).dtype == torch.float64


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="at least 1"):
        VAE(SHAPE, z_dim=0)
    vae = small_vae()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vae.model(torch.full((2, *SHAPE), 2.0))
    with pytest.raises(ValueError, match="shape"):
        vae.guide(torch.rand(2, 5, 5))
    with pytest.raises(ValueError, match="needs observed data"):
        vae.guide()
    with pytest.raises(ValueError, match="unknown posterior family"):
        make_posterior("gumbel", SHAPE, 2)


def test_free_bits_objective():
    from pyro_gen.vae import FreeBitsELBO, make_loss

    vae = small_vae()
    x = data(8)
    pyro.set_rng_seed(3)
    meanfield = TraceMeanField_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    assert abs(FreeBitsELBO(0.0).loss(vae.model, vae.guide, x) - meanfield) < 1e-3
    # a large floor replaces each dimension's KL by the floor: loss = -rec + lam * D * B
    pyro.set_rng_seed(3)
    tr = poutine.trace(vae.guide).get_trace(x)
    rec = poutine.trace(poutine.replay(vae.model, trace=tr)).get_trace(x).nodes[OBS]
    rec = rec["fn"].log_prob(rec["value"]).sum().item()
    pyro.set_rng_seed(3)
    assert abs(FreeBitsELBO(100.0).loss(vae.model, vae.guide, x) - (-rec + 100 * 3 * 8)) < 1e-2
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), make_loss("freebits"))
    assert torch.isfinite(torch.tensor(svi.step(x)))
    with pytest.raises(ValueError):
        make_loss("hinge")


@pytest.mark.parametrize("prior", ["normal", "mixture"])
@pytest.mark.parametrize("wrapper", ["subsampled plate", "poutine.scale", "poutine.mask"])
def test_free_bits_at_zero_is_the_elbo_under_scales_and_masks(prior, wrapper):
    """With a zero floor free bits is the ELBO itself (the mean-field one for Normal sites,
    whose KL it takes in closed form): Pyro's scales (a subsampled plate's N/B,
    poutine.scale) and masks count once. The observed term was scaled twice and the
    closed-form KL ignored masks (1116.8 against 320.6 nats with N/B = 4)."""
    import pyro.distributions as dist

    from pyro_gen.vae import FreeBitsELBO, GaussianMixture

    keep = torch.tensor([True, False, True, True, False, True])

    def wrap(fn):
        def wrapped(x):
            if wrapper == "subsampled plate":
                with pyro.plate("data", 24, subsample=torch.arange(6)):
                    return fn(x)
            with pyro.plate("data", 6):
                if wrapper == "poutine.scale":
                    with poutine.scale(scale=0.5):
                        return fn(x)
                with poutine.mask(mask=keep):
                    return fn(x)

        return wrapped

    def model(x):
        if prior == "normal":
            pz = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        else:
            locs = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
            pz = GaussianMixture(torch.zeros(2), locs, torch.ones(2, 2))
        z = pyro.sample("z", pz)
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 0.5).to_event(1), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(x.expand(6, 2) / 2, 0.7).to_event(1))

    x = torch.linspace(-1.0, 1.0, 6).unsqueeze(-1)
    reference = TraceMeanField_ELBO() if prior == "normal" else Trace_ELBO()
    pyro.set_rng_seed(0)
    expected = reference.loss(wrap(model), wrap(guide), x)
    pyro.set_rng_seed(0)
    assert FreeBitsELBO(0.0).loss(wrap(model), wrap(guide), x) == pytest.approx(expected, rel=1e-6)


def test_free_bits_counts_an_autoguides_auxiliary_draw():
    """Pyro's AutoNormal samples a global latent as an auxiliary unconstrained draw plus a
    Delta at the latent's site: the auxiliary draw's -log q is part of the ELBO, and free
    bits at zero left it out."""
    import pyro.distributions as dist
    from pyro.infer.autoguide import AutoNormal

    from pyro_gen.vae import FreeBitsELBO

    def model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    pyro.clear_param_store()
    x = torch.linspace(-1.0, 2.0, 10)
    guide = AutoNormal(model)
    guide(x)  # built before the seeded draws
    pyro.set_rng_seed(0)
    expected = Trace_ELBO().loss(model, guide, x)
    pyro.set_rng_seed(0)
    assert FreeBitsELBO(0.0).loss(model, guide, x) == pytest.approx(expected, rel=1e-6)


def test_free_bits_refuses_to_train_a_latent_it_cannot_differentiate_through():
    """A discrete guide site trained silently with a biased gradient (no score-function
    term: the classifier learned only from log q); its value is still the estimate."""
    import pyro.distributions as dist

    from pyro_gen.vae import FreeBitsELBO

    classifier = torch.nn.Linear(2, 3)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(torch.ones(3) / 3))
            pyro.sample("x", dist.Normal(y.float().unsqueeze(-1), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=classifier(x)))

    x = torch.randn(5, 2)
    assert isinstance(FreeBitsELBO(0.1).loss(model, guide, x), float)
    with pytest.raises(ValueError, match=r"guide site 'y' \(Categorical\) cannot be repar"):
        FreeBitsELBO(0.1).differentiable_loss(model, guide, x)
    with pytest.raises(ValueError, match=r"model site 'y' \(Categorical\) cannot be repar"):
        FreeBitsELBO(0.1).loss_and_grads(model, poutine.block(guide, hide=["y"]), x)
