"""Correctness on a linear-Gaussian latent model, whose posterior and marginal likelihood
are closed-form:

    z ~ N(0, I),  x | z ~ N(W z + b, s^2 I)  =>  p(x) = N(b, W W^T + s^2 I),
    p(z | x) = N(S W^T (x - b) / s^2, S),  S = (I + W^T W / s^2)^{-1}.

W has orthogonal columns, so the exact posterior is diagonal and a mean-field guide can
reach it: every guide's ELBO must approach log p(x), and IWAE must stay below it.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_gen.vae import (
    DATA_PLATE,
    LATENT,
    VAE,
    Decoder,
    GaussianLikelihood,
    IAFPosterior,
    MLPEncoder,
    NormalPosterior,
    PerExamplePosterior,
    iwae,
)

DZ, DX, SIG, N = 2, 4, 0.5, 128


class LinearDecoder(Decoder):
    def __init__(self, W, b, learn=False):
        super().__init__()
        self.event_shape = (W.shape[0],)
        self.likelihood = GaussianLikelihood(SIG)
        if learn:
            self.W, self.b = torch.nn.Parameter(W.clone()), torch.nn.Parameter(b.clone())
        else:
            self.register_buffer("W", W)
            self.register_buffer("b", b)

    def params(self, z, context=None):
        return (z @ self.W.T + self.b)[..., None]

    def log_marginal(self, x):
        W, b = self.W.detach(), self.b.detach()
        cov = W @ W.T + SIG**2 * torch.eye(DX)
        return torch.distributions.MultivariateNormal(b, cov).log_prob(x)


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(DX, DZ, generator=g))
    W, b = q * torch.tensor([2.0, 1.0]), torch.randn(DX, generator=g)

    def draw(n):
        z = torch.randn(n, DZ, generator=g)
        return z @ W.T + b + SIG * torch.randn(n, DX, generator=g)

    return W, b, draw(N), draw(N)


def mean_elbo(vae, x, num_particles=200, **kw):
    loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    return -loss.loss(vae.model, vae.guide, x, **kw) / x.shape[0]


def train(vae, x, steps=250, lr=3e-2, **kw):
    # decaying step size: the last iterate is not dominated by Monte Carlo gradient noise
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.01 ** (1 / steps)})
    svi = SVI(vae.model, vae.guide, optim, Trace_ELBO())
    for _ in range(steps):
        svi.step(x, **kw)


def test_exact_posterior_gives_exact_log_likelihood(problem):
    W, b, x, _ = problem
    dec = LinearDecoder(W, b)
    vae = VAE((DX,), DZ, decoder=dec)
    S = torch.linalg.inv(torch.eye(DZ) + W.T @ W / SIG**2)
    assert torch.allclose(S, torch.diag(torch.diag(S)), atol=1e-6)  # diagonal posterior
    loc = (x - b) @ W @ S / SIG**2

    def exact_guide(x, **kw):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(LATENT, dist.MultivariateNormal(loc, S))

    exact = dec.log_marginal(x).mean().item()
    elbo = Trace_ELBO(num_particles=10, vectorize_particles=True, max_plate_nesting=1)
    assert abs(-elbo.loss(vae.model, exact_guide, x) / N - exact) < 1e-3
    assert abs(-iwae(10).loss(vae.model, exact_guide, x) / N - exact) < 1e-3


def test_iwae_below_exact_and_tightening_with_k(problem):
    W, b, x, _ = problem
    dec = LinearDecoder(W, b)
    vae = VAE((DX,), DZ, hidden_dim=8, decoder=dec)  # untrained guide: a loose bound
    exact = dec.log_marginal(x).mean().item()
    bounds = []
    for k in (1, 10, 100):
        reps = [-iwae(k).loss(vae.model, vae.guide, x) / N for _ in range(5)]
        bounds.append(sum(reps) / len(reps))
    assert bounds[0] < bounds[1] < bounds[2] < exact
    assert exact - bounds[2] < exact - bounds[0]


def test_per_example_guide_reaches_exact_log_likelihood(problem):
    W, b, x, _ = problem
    dec = LinearDecoder(W, b)
    vae = VAE((DX,), DZ, decoder=dec, posterior=PerExamplePosterior(N, DZ, init_scale=0.3))
    idx = torch.arange(N)
    train(vae, x, steps=200, lr=0.1, idx=idx)
    exact = dec.log_marginal(x).mean().item()
    gap = exact - mean_elbo(vae, x, idx=idx)
    assert -0.02 < gap < 0.05


def test_same_model_three_guides(problem):
    """Model untouched, guide swapped: normal, IAF and the autoguide all train the linear
    decoder, reach the closed-form log-likelihood of the learned model, and agree on the
    test ELBO."""
    W, b, x, x_test = problem
    true_test = LinearDecoder(W, b).log_marginal(x_test).mean().item()
    guides = {
        "normal": lambda: {"posterior": NormalPosterior(MLPEncoder((DX,), DZ, (16,)))},
        "iaf": lambda: {
            "posterior": IAFPosterior(MLPEncoder((DX,), DZ, (16,)), num_flows=2, hidden_dims=(16,))
        },
        "auto": lambda: {"guide": "auto"},
    }
    test_elbos = {}
    for name, make in guides.items():
        pyro.set_rng_seed(0)
        pyro.clear_param_store()
        g = torch.Generator().manual_seed(1)
        dec = LinearDecoder(0.5 * torch.randn(DX, DZ, generator=g), torch.zeros(DX), learn=True)
        vae = VAE((DX,), DZ, hidden_dim=16, decoder=dec, **make())
        train(vae, x)
        gap = dec.log_marginal(x).mean().item() - mean_elbo(vae, x)
        assert -0.03 < gap < 0.12, (name, gap)
        iw = -iwae(50).loss(vae.model, vae.guide, x) / N
        assert iw <= dec.log_marginal(x).mean().item() + 0.01, name
        test_elbos[name] = mean_elbo(vae, x_test)
    assert max(test_elbos.values()) - min(test_elbos.values()) < 0.1, test_elbos
    assert min(test_elbos.values()) > true_test - 0.2, (test_elbos, true_test)
