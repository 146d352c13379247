"""AutoAmortizedNormal on custom models: VAE-like, two-layer hierarchical (closed-form
marginal), a global latent with a constrained local, inner plates, and clear errors.
Minibatches, discrete sites and checkpoints have their own files."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from pyro_gen.vae import AutoAmortizedNormal, iwae


def fit(model, guide, *args, steps=200, lr=2e-2, **kwargs):
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.05 ** (1 / steps)})
    svi = SVI(model, guide, optim, Trace_ELBO())
    return [svi.step(*args, **kwargs) for _ in range(steps)]


def test_vae_like_model_trains_in_three_lines():
    decoder = torch.nn.Sequential(
        torch.nn.Linear(2, 16), torch.nn.Softplus(), torch.nn.Linear(16, 10)
    )

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    x = (torch.rand(64, 10) < torch.linspace(0.1, 0.9, 10)).float()
    guide = AutoAmortizedNormal(model, hidden_dims=(16,))
    losses = fit(model, guide, x, steps=60)
    assert sum(losses[-10:]) < sum(losses[:10])
    tr = poutine.trace(guide).get_trace(x)
    assert tr.nodes["z"]["value"].shape == (64, 2)
    assert guide.global_guide is None and list(guide.local_sites) == ["z"]
    z = guide.encode(x)["z"]
    assert not torch.allclose(z[0], z[1])  # amortized: depends on the example
    # vectorized particles (IWAE) broadcast through the guide
    assert torch.isfinite(torch.tensor(iwae(5).loss(model, guide, x)))


def test_two_layer_hierarchical_linear_gaussian():
    """z2 -> z1 -> x, all linear-Gaussian: the posterior precision L is constant, so the
    best mean-field guide (variances 1/L_ii) has the closed-form gap
    KL = (sum_i log L_ii - log det L) / 2; the autoguide must reach it."""
    g = torch.Generator().manual_seed(0)
    W, V, sig = torch.randn(3, 2, generator=g), torch.randn(4, 3, generator=g), 0.5

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2 @ W.T, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ V.T, sig).to_event(1), obs=x)

    cov = V @ (W @ W.T + torch.eye(3)) @ V.T + sig**2 * torch.eye(4)
    marginal = torch.distributions.MultivariateNormal(torch.zeros(4), cov)
    x = marginal.sample((128,))
    exact = marginal.log_prob(x).mean().item()
    prec = torch.zeros(5, 5)  # over (z1, z2)
    prec[:3, :3] = torch.eye(3) + V.T @ V / sig**2
    prec[:3, 3:], prec[3:, :3] = -W, -W.T
    prec[3:, 3:] = torch.eye(2) + W.T @ W
    mf_gap = 0.5 * (prec.diag().log().sum() - torch.logdet(prec)).item()

    guide = AutoAmortizedNormal(model, hidden_dims=(32,))
    fit(model, guide, x, steps=300, lr=3e-2)
    assert set(guide.local_sites) == {"z1", "z2"}
    elbo = (
        -Trace_ELBO(num_particles=100, vectorize_particles=True, max_plate_nesting=1).loss(
            model, guide, x
        )
        / 128
    )
    bound = -iwae(100).loss(model, guide, x) / 128
    assert elbo < bound < exact + 0.02
    assert mf_gap - 0.03 < exact - elbo < mf_gap + 0.15, (exact - elbo, mf_gap)


def test_global_latent():
    g = torch.Generator().manual_seed(1)
    w_true = torch.tensor([1.0, -2.0, 0.5])
    x = torch.randn(200, 1, generator=g) * w_true + 0.3 * torch.randn(200, 3, generator=g)

    def model(x):
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 3.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z * w, 0.3).to_event(1), obs=x)

    guide = AutoAmortizedNormal(model, hidden_dims=(32,))
    fit(model, guide, x, steps=250, lr=0.1)
    assert list(guide.local_sites) == ["z"]
    w = guide.global_guide.median(x)["w"]
    # identified up to sign; the coupling of w with every z_n makes the scale converge
    # slowly (0.84 of the truth here, 0.93 after twice the steps), the direction fast
    assert torch.nn.functional.cosine_similarity(w.abs(), w_true.abs(), 0) > 0.99, w
    assert 0.75 < (w.norm() / w_true.norm()).item() < 1.1, w


def test_constrained_local_site():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            s = pyro.sample("s", dist.Gamma(2.0, 2.0))
            pyro.sample("x", dist.Normal(torch.zeros(8), s.unsqueeze(-1)).to_event(1), obs=x)

    scales = torch.linspace(0.2, 3.0, 64)
    x = torch.randn(64, 8) * scales[:, None]
    guide = AutoAmortizedNormal(model, hidden_dims=(16,))
    fit(model, guide, x, steps=150, lr=3e-2)
    s = guide.encode(x)["s"]
    assert (s > 0).all()
    assert torch.corrcoef(torch.stack([s, x.std(1)]))[0, 1] > 0.8
    assert (poutine.trace(guide).get_trace(x).nodes["s"]["value"] > 0).all()


def test_inner_plate_and_event_dims():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            with pyro.plate("groups", 3, dim=-2):
                u = pyro.sample("u", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(u.sum(-3), 1.0).to_event(1), obs=x)

    x = torch.randn(5, 2)
    guide = AutoAmortizedNormal(model, hidden_dims=(8,))
    tr = poutine.trace(guide).get_trace(x)
    assert tr.nodes["u"]["value"].shape == (3, 5, 2)
    loss = Trace_ELBO().differentiable_loss(model, guide, x)
    loss.backward()
    assert all(p.grad is not None for p in guide.parameters())


def test_clear_errors():
    def no_plate(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ValueError, match="no such plate"):
        AutoAmortizedNormal(no_plate)(torch.zeros(3))

    def no_data_arg(n):
        with pyro.plate("data", n):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="input_fn"):
        AutoAmortizedNormal(no_data_arg)(4)
    guide = AutoAmortizedNormal(no_data_arg, input_fn=lambda n: torch.ones(n, 1))
    assert guide(4)["z"].shape == (4,)

    def discrete(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("label", dist.Categorical(torch.ones(3) / 3))

    with pytest.raises(ValueError, match=r"discrete site 'label'.*TraceEnum_ELBO.*AutoGuideList"):
        AutoAmortizedNormal(discrete)(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="init_scale"):
        AutoAmortizedNormal(discrete, init_scale=0.0)
