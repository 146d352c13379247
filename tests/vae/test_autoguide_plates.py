"""AutoAmortizedNormal on minibatches and plates of any name: Pyro's N/B scaling (the loss
equals Pyro's Trace_ELBO with AutoNormal on the same subsampled model), indices drawn by
the guide and replayed by the model, explicit indices through create_plates, and the
data plate found by size whatever its name."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.poutine.util import site_is_subsample

from pyro_gen.vae import AutoAmortizedNormal

N, B = 40, 8


def model(x, idx, size=N):
    """A global positive scale and a 2-D local latent per example, on a minibatch."""
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", size, subsample=idx):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x)


def test_minibatch_loss_equals_pyro_autonormal():
    """Same subsampled model, AutoNormal against AutoAmortizedNormal set to the same
    distributions: same latent sites, same N/B scales, same loss for the same noise."""
    x, idx = torch.randn(B, 2), torch.arange(3, 3 + B)
    ours = AutoAmortizedNormal(model, hidden_dims=(4,), init_scale=0.1)
    ours.setup(x, idx)
    with torch.no_grad():  # every example gets loc 0, scale 0.1: AutoNormal's start
        ours.net[-1].weight.zero_()
    ref = AutoNormal(model, create_plates=lambda x, idx: pyro.plate("data", N, subsample=idx))
    ref(x, idx)  # built before the seed is set, as ours is: setting up draws from the prior

    losses, traces = [], []
    for guide in (ours, ref):
        pyro.set_rng_seed(7)
        losses.append(Trace_ELBO().loss(model, guide, x, idx))
        pyro.set_rng_seed(7)
        traces.append(poutine.trace(guide).get_trace(x, idx))
    latent = [
        {
            n
            for n, site in tr.iter_stochastic_nodes()
            if not site["infer"].get("is_auxiliary") and not site_is_subsample(site)
        }
        for tr in traces
    ]
    assert latent[0] == latent[1] == {"s", "z"}
    for tr in traces:
        assert tr.nodes["z"]["scale"] == N / B and tr.nodes["s"]["scale"] == 1.0
        assert tr.nodes["z"]["value"].shape == (B, 2)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    # the scale is Pyro's: the same guide on an unsubsampled plate of B examples differs
    # by (N/B - 1) times the local terms
    pyro.set_rng_seed(7)
    unscaled = Trace_ELBO().loss(lambda x, idx: model(x, idx, size=B), ours, x, torch.arange(B))
    assert unscaled != pytest.approx(losses[0], rel=1e-3)


def test_guide_draws_indices_and_the_model_replays_them():
    """Full data given, the plate subsamples inside the model: the guide encodes exactly
    the rows the model observes, and the local terms carry N/B."""
    x_full = torch.randn(N, 2)

    def full_model(x):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0], subsample_size=B) as i:
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x[i])

    guide = AutoAmortizedNormal(full_model, hidden_dims=(4,))
    guide_tr = poutine.trace(guide).get_trace(x_full)
    model_tr = poutine.trace(poutine.replay(full_model, trace=guide_tr)).get_trace(x_full)
    picked = guide_tr.nodes["data"]["value"]
    assert picked.shape == (B,) and torch.equal(model_tr.nodes["data"]["value"], picked)
    assert torch.equal(model_tr.nodes["x"]["value"], x_full[picked])
    loc = guide.encode(x_full)["z"][picked]
    assert torch.allclose(guide_tr.nodes["z"]["fn"].base_dist.loc, loc, atol=1e-6)
    assert guide_tr.nodes["z"]["scale"] == model_tr.nodes["z"]["scale"] == N / B


def test_global_latent_learned_from_minibatches():
    """Minibatch SVI (20 of 400 examples per step) finds the global noise scale."""
    g = torch.Generator().manual_seed(0)
    x_all = 1.5 * torch.randn(400, 2, generator=g)  # z + noise: total variance 2.25

    def noise_model(x, idx):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", 400, subsample=idx):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x)

    guide = AutoAmortizedNormal(noise_model, hidden_dims=(16,))
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.05 ** (1 / 100)})
    svi = SVI(noise_model, guide, optim, Trace_ELBO())
    pyro.set_rng_seed(0)
    for _ in range(100):
        idx = torch.randperm(400, generator=g)[:20]
        svi.step(x_all[idx], idx)
    s = guide.median(x_all[:5], torch.arange(5))["s"].item()
    assert 1.0 < s < 1.25, s  # the marginal variance 1 + s^2 = 2.25 gives s = 1.12


def test_explicit_indices_on_full_data_need_create_plates():
    x_full = torch.randn(N, 2)
    idx = torch.arange(B)

    def own_indices(x, idx):
        with pyro.plate("data", x.shape[0], subsample=idx):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x[idx])

    with pytest.raises(ValueError, match="create_plates"):
        AutoAmortizedNormal(own_indices)(x_full, idx)
    guide = AutoAmortizedNormal(
        own_indices,
        hidden_dims=(4,),
        create_plates=lambda x, idx: pyro.plate("data", x.shape[0], subsample=idx),
    )
    tr = poutine.trace(guide).get_trace(x_full, idx + 5)
    assert tr.nodes["z"]["scale"] == N / B
    loc = guide.encode(x_full, idx)["z"][idx + 5]
    assert torch.allclose(tr.nodes["z"]["fn"].base_dist.loc, loc, atol=1e-6)


def test_any_plate_name_and_the_data_plate_found_by_size():
    def named(x):
        # a plate over 3 mixture weights that is not the data, and the data plate
        with pyro.plate("components", 3):
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("examples", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            u = pyro.sample("u", dist.Normal(z, 1.0))
            pyro.sample("x", dist.Normal(u + w.sum(), 1.0), obs=x)

    x = torch.randn(7)
    guide = AutoAmortizedNormal(named, hidden_dims=(4,), input_fn=None)
    tr = poutine.trace(guide).get_trace(x)
    assert guide.plate_name == "examples" and set(guide.local_sites) == {"z", "u"}
    assert tr.nodes["w"]["value"].shape == (3,) and tr.nodes["u"]["value"].shape == (7,)
    assert torch.isfinite(torch.tensor(Trace_ELBO().loss(named, guide, x)))
    # a batch of a different size trains through the same guide
    assert poutine.trace(guide).get_trace(torch.randn(4)).nodes["z"]["value"].shape == (4,)
    with pytest.raises(ValueError, match="no such plate 'data'.*'examples'"):
        AutoAmortizedNormal(named, plate_name="data")(x)
    chosen = AutoAmortizedNormal(named, plate_name="components", input_fn=lambda x: x[:3, None])
    chosen(x)
    assert set(chosen.local_sites) == {"w"}


@pytest.mark.parametrize("subsample", [False, True])
def test_sites_the_model_masks_are_masked_alike(subsample):
    """Padded entries are masked out of the model; the guide masks them too (row by row,
    for the rows the model's plate picks), so its entropy there does not enter the ELBO."""
    x_full, keep_full = torch.randn(N, 3), torch.rand(N, 3) < 0.6

    def padded(x, keep):
        size = B if subsample else None
        with pyro.plate("data", x.shape[0], subsample_size=size, dim=-2) as i:  # noqa: SIM117
            with poutine.mask(mask=keep[i]):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]))
                pyro.sample("x", dist.Normal(z, 1.0), obs=x[i])

    guide = AutoAmortizedNormal(padded, hidden_dims=(4,))
    guide_tr = poutine.trace(guide).get_trace(x_full, keep_full)
    rows = guide_tr.nodes["data"]["value"] if subsample else torch.arange(N)
    assert torch.equal(guide_tr.nodes["z"]["mask"], keep_full[rows])
    guide_tr.compute_log_prob()
    assert torch.equal(guide_tr.nodes["z"]["log_prob"] == 0, ~keep_full[rows])


def test_a_plate_without_a_size_as_in_pyros_ss_vae_example():
    """``pyro.plate("data")`` with no size takes it from the sites' batch shape; the guide
    used its recorded size -1 (it found no data plate, and its plates could not be made).
    The guide's ELBO equals that on the same model with a sized plate, at any batch size."""

    def model(x, sized=False):
        with pyro.plate("data", x.shape[0] if sized else None):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    pyro.clear_param_store()
    guide = AutoAmortizedNormal(model, hidden_dims=(8,))
    guide.setup(torch.randn(6, 1))  # before the seeded draws
    for x in (torch.randn(6, 1), torch.randn(4, 1)):
        pyro.set_rng_seed(0)
        loss = Trace_ELBO().loss(model, guide, x)
        pyro.set_rng_seed(0)
        assert loss == pytest.approx(Trace_ELBO().loss(model, guide, x, sized=True), rel=1e-6)
        assert poutine.trace(guide).get_trace(x).nodes["z"]["value"].shape == (x.shape[0], 2)
    assert guide.plate_name == "data"
    # a set-up that failed is done again, with the same clear error, not used half built
    bad = AutoAmortizedNormal(model, hidden_dims=(8,), plate_name="nope")
    for _ in range(2):
        with pytest.raises(ValueError, match="no such plate 'nope'"):
            bad(torch.randn(6, 1))
