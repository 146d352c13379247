"""pyro_gen flows inside the Pyro programs of Pyro's flow and SVI tutorials, unchanged.

Each program is one a Pyro user writes (an ``AutoNormalizingFlow`` guide for a model with
a plate and several latent sites, a flow prior in a VAE, a conditional flow as the
amortized guide of a CVAE, density estimation with ``obs=data`` in a plate), run under what
users vary: ``Trace_ELBO`` with several (vectorized) particles, ``TraceMeanField_ELBO``,
``TraceGraph_ELBO``, ``poutine.scale``/``condition``, ``Predictive``, extra batch dims,
float64 built by hand. Every loss is checked against the same bound computed by hand from
the values the guide drew, with each flow density taken by the change of variables through
an autograd Jacobian (float64); a flow that is an affine map is checked against its
closed-form Gaussian.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as PT
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormalizingFlow

from pyro_gen import transforms as T

F64 = torch.float64


def _perturb(module: torch.nn.Module, scale: float = 0.2) -> torch.nn.Module:
    """Moves a layer off the identity its zero-initialised networks start at."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def _normal(loc: torch.Tensor, scale: float | torch.Tensor) -> dist.Distribution:
    return dist.Normal(loc, scale).to_event(1)


def _autograd_log_density(transforms, base_log_prob, z: torch.Tensor) -> torch.Tensor:
    r""":math:`\log p(z) = \log p_0(u) - \log|\det \partial T/\partial u|` at ``u = T^{-1}(z)``
    for each row of ``z`` (shape ``(n, D)``), the Jacobian by autograd of the forward maps.

    ``transforms`` maps a ``(D,)`` vector to a ``(D,)`` vector; ``base_log_prob(u, i)`` is
    the base density of row ``i``. The inverse is the transform's own, but the forward map
    must give ``z`` back, so a wrong inverse fails here too.
    """
    out = []
    for i, zi in enumerate(z):
        u = zi
        for t in reversed(transforms):
            u = t.inv(u.clone())
        u = u.detach()
        forward = _compose(transforms)
        torch.testing.assert_close(forward(u.clone()), zi.detach())
        jac = torch.autograd.functional.jacobian(forward, u.clone())
        out.append(base_log_prob(u, i) - torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def _compose(transforms):
    def forward(u: torch.Tensor) -> torch.Tensor:
        for t in transforms:
            u = t(u)
        return u

    return forward


# ------------------------------------------------------------------ AutoNormalizingFlow


def _global_local_model(x: torch.Tensor) -> None:
    """A global mean (2,), a local latent per data point under the plate, observed data."""
    mu = pyro.sample("mu", _normal(x.new_zeros(2), 3.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", _normal(mu, 1.0))
        pyro.sample("x", _normal(z, 0.5), obs=x)


def _global_local_log_joint(x: torch.Tensor, mu: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per particle: ``mu`` is ``(K, 2)``, ``z`` is ``(K, N, 2)``."""
    lp = dist.Normal(0.0, 3.0).log_prob(mu).sum(-1)
    lp = lp + dist.Normal(mu.unsqueeze(-2), 1.0).log_prob(z).sum((-1, -2))
    return lp + dist.Normal(z, 0.5).log_prob(x).sum((-1, -2))


def _guide_flow(dim: int) -> PT.ComposeTransformModule:
    """Every vector family pyro_gen has, as one guide flow (``cache_size=1``: the guide
    scores its own draws without inverting, as ``AutoNormalizingFlow`` does)."""
    parts = [
        T.affine_coupling(dim, hidden_dims=[8]),
        T.permute(dim, "random", seed=0),
        T.spline_autoregressive(dim, [8], num_bins=4),
        T.ActNorm(dim),
        T.masked_autoregressive(dim, [8]),
        T.inverse_autoregressive(dim, [8]),
        T.invertible_conv1x1(dim),
        T.additive_coupling(dim, parity=1, hidden_dims=[8]),
    ]
    return _perturb(PT.ComposeTransformModule(parts, cache_size=1).double())


def _recording(guide, seen: list):
    """The guide, keeping what it returned (an autoguide returns its draws per site)."""

    def recorded(*args, **kwargs):
        values = guide(*args, **kwargs)
        seen.append({k: v.detach() for k, v in values.items()})
        return values

    return recorded


ELBOS = {
    "trace_vectorized": lambda: Trace_ELBO(
        num_particles=3, vectorize_particles=True, max_plate_nesting=1
    ),
    "trace_sequential": lambda: Trace_ELBO(num_particles=2, max_plate_nesting=1),
    "meanfield": lambda: TraceMeanField_ELBO(
        num_particles=3, vectorize_particles=True, max_plate_nesting=1
    ),
    "tracegraph": lambda: TraceGraph_ELBO(
        num_particles=3, vectorize_particles=True, max_plate_nesting=1
    ),
}


@pytest.mark.parametrize("elbo", list(ELBOS))
def test_autonormalizingflow_loss_is_the_change_of_variables_bound(elbo: str) -> None:
    """Pyro's ``AutoNormalizingFlow`` with a pyro_gen flow over a global and N local
    latents: the loss is minus the mean over particles of ``log p(x, mu, z) - log q``, with
    ``q`` by autograd; vectorized particles are distinct draws, not one broadcast."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, dtype=F64)
    guide = AutoNormalizingFlow(_global_local_model, _guide_flow)
    guide(x)  # builds the flow (ActNorm initialises on this first draw)
    seen: list = []
    loss = ELBOS[elbo]().loss(_global_local_model, _recording(guide, seen), x)

    mu = torch.cat([s["mu"].reshape(-1, 2) for s in seen])
    z = torch.cat([s["z"].reshape(-1, 3, 2) for s in seen])
    assert mu.dtype == F64 and len(mu) in (2, 3) and len(set(mu[:, 0].tolist())) == len(mu)
    latent = torch.cat([mu, z.reshape(len(z), -1)], -1)  # AutoContinuous packs sites in order
    base = guide.get_base_dist()
    log_q = _autograd_log_density(
        list(guide.get_transform().parts), lambda u, i: base.log_prob(u), latent
    )
    expected = -(_global_local_log_joint(x, mu, z) - log_q).mean()
    assert math.isclose(loss, float(expected), rel_tol=1e-9)


# ------------------------------------------------------------------ a flow prior in a VAE


class _FlowPriorVAE(torch.nn.Module):
    """Pyro's VAE tutorial with a flow prior ``p(z)``: linear encoder/decoder, the data
    subsampled from ``N`` so the local sites carry ``poutine.scale(N / B)``."""

    def __init__(self, n_total: int) -> None:
        super().__init__()
        self.n_total = n_total
        self.prior_flow = [
            _perturb(T.masked_autoregressive(2, [8]).double()),
            _perturb(T.spline_coupling(2, hidden_dims=[8], num_bins=4).double()),
            _perturb(T.residual_block(2, [8], logdet="exact", tol=1e-12).double(), 0.5),
        ]
        self.flows = torch.nn.ModuleList(self.prior_flow)
        self.decoder = torch.nn.Linear(2, 3).double()
        self.encoder = torch.nn.Linear(3, 4).double()

    def prior(self) -> dist.TransformedDistribution:
        base = _normal(torch.zeros(2, dtype=F64), 1.0)
        return dist.TransformedDistribution(base, self.prior_flow)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("flows", self.flows)
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.n_total / x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", _normal(self.decoder(z), 0.5), obs=x)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = self.encoder(x).chunk(2, -1)
        return loc, log_scale.exp()

    def guide(self, x: torch.Tensor) -> torch.Tensor:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.n_total / x.shape[0]):
            return pyro.sample("z", _normal(*self.encode(x)))


@pytest.mark.parametrize("elbo", list(ELBOS))
def test_vae_with_a_flow_prior_loss_is_the_scaled_bound(elbo: str) -> None:
    """The loss is ``N / B`` times minus the per-particle mean of ``sum_i log p(x_i | z_i)
    + log p(z_i) - log q(z_i | x_i)``, ``p(z)`` by autograd; the prior's parameters get
    gradients from ``loss_and_grads``."""
    torch.manual_seed(1)
    vae = _FlowPriorVAE(n_total=20)
    x = torch.randn(4, 3, dtype=F64)
    seen: list = []

    def guide(x):
        z = vae.guide(x)
        seen.append(z.detach())
        return z

    loss = ELBOS[elbo]().loss_and_grads(vae.model, guide, x)
    z = torch.cat([s.reshape(-1, 4, 2) for s in seen])
    base = _normal(torch.zeros(2, dtype=F64), 1.0)
    log_prior = _autograd_log_density(
        vae.prior_flow, lambda u, i: base.log_prob(u), z.reshape(-1, 2)
    ).reshape(z.shape[:2])
    with torch.no_grad():
        log_lik = _normal(vae.decoder(z), 0.5).log_prob(x)
        log_q = _normal(*vae.encode(x)).log_prob(z)
    expected = -(20 / 4) * (log_lik + log_prior - log_q).sum(-1).mean()
    assert math.isclose(loss, float(expected), rel_tol=1e-9)
    for name, p in vae.flows.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


# ------------------------------------------------------------------ event shapes of a stack


@pytest.mark.parametrize(
    "base_shape, make",
    [
        ((5,), lambda: [T.affine_coupling(3, hidden_dims=[8])]),
        ((1, 4, 4), lambda: [T.ActNorm((1, 4, 4)), T.masked_autoregressive(16, [8])]),
        ((2, 4, 4), lambda: [T.Squeeze((1, 4, 4))]),
        ((15,), lambda: [T.multi_scale((1, 4, 4), lambda s, last: [T.ActNorm(s)], 1)]),
    ],
    ids=["vector", "image_then_vector", "squeeze", "multiscale"],
)
def test_a_stack_whose_event_shapes_disagree_is_refused_when_built(base_shape, make) -> None:
    """``TransformedDistribution`` takes its shapes from ``forward_shape``; as torch's
    ``ReshapeTransform`` (fixed event shapes, as ours) does, a base of other sizes is an
    error there. Before, the distribution reported an event shape no draw had
    (``(1, 4, 16)`` for the image/vector stack) and failed only when sampled."""
    base = _normal(torch.zeros(base_shape), 1.0).to_event(len(base_shape) - 1)
    wrong = torch.Size([base.event_shape.numel() + 1])
    with pytest.raises(ValueError, match="Shape mismatch"):
        dist.TransformedDistribution(base, [PT.ReshapeTransform(wrong, wrong)])
    with pytest.raises(ValueError, match=r"takes events of shape .*ReshapeTransform"):
        dist.TransformedDistribution(base, make())
    # the same stacks over the base they expect, and a base with more batch dims, build
    for t in make():
        good = _normal(torch.zeros(3, *t.event_shape), 1.0).to_event(len(t.event_shape) - 1)
        assert dist.TransformedDistribution(good, [t]).batch_shape == (3,)
