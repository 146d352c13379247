"""The Pyro programs of Pyro's flow and SVI tutorials with pyro_gen flows in them, shared by
the test_user_flow_programs_*.py files: an ``AutoNormalizingFlow`` guide for a model with a
plate and several latent sites, a VAE with a flow prior, a CVAE with a conditional flow as
its amortized guide; the ELBOs users vary; and the by-hand check of a flow density, the
change of variables through an autograd Jacobian (float64)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as PT
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

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

    ``transforms`` maps rows of ``D`` to rows of ``D``; ``base_log_prob(u)`` is the base
    density of the rows of ``u``. The inverse is the transforms' own, but the forward map
    must give ``z`` back, so a wrong inverse fails here too. Rows are independent, so the
    Jacobian of the row sum with respect to all rows holds every row's Jacobian.
    """
    u = z.detach()
    for t in reversed(transforms):
        u = t.inv(u.clone())
    u = u.detach()
    forward = _compose(transforms)
    torch.testing.assert_close(forward(u.clone()), z.detach())
    jac = torch.autograd.functional.jacobian(lambda v: forward(v).sum(0), u.clone())
    jac = jac.permute(1, 0, 2)  # (n, D_out, D_in)
    return base_log_prob(u) - torch.linalg.slogdet(jac)[1]


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
    lp = _normal(torch.zeros(2, dtype=F64), 3.0).log_prob(mu)
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


# ------------------------------------------------------------------ a flow prior in a VAE


class _FlowPriorVAE(torch.nn.Module):
    """Pyro's VAE tutorial with a flow prior ``p(z)``: linear encoder/decoder, the data
    subsampled from ``N`` so the local sites carry ``poutine.scale(N / B)``."""

    def __init__(self, n_total: int) -> None:
        super().__init__()
        self.n_total = n_total
        iaf = _perturb(T.inverse_autoregressive(2, [8]).double())
        self.flows = torch.nn.ModuleList(
            [
                _perturb(T.masked_autoregressive(2, [8]).double()),
                _perturb(T.spline_coupling(2, hidden_dims=[8], num_bins=4).double()),
                _perturb(T.residual_block(2, [8], logdet="exact", tol=1e-12).double(), 0.5),
                iaf,
            ]
        )
        # an IAF's inverse as a MAF-direction layer (``t.inv``, as users turn one into the
        # other); the module list registers its parameters, the stack uses the inverse
        self.prior_flow = [*self.flows[:3], iaf.inv]
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


# ------------------------------------------------------------------ a conditional flow guide


class _CVAE(torch.nn.Module):
    """Pyro's CVAE example shape: predict ``y`` from ``x`` through a latent ``z``; the
    amortized guide ``q(z | x, y)`` is a Gaussian pushed through conditional flows that
    see ``x`` (``ConditionalTransformedDistribution(...).condition(x)``)."""

    def __init__(self) -> None:
        super().__init__()
        flows = [
            T.conditional_affine_coupling(2, 3, hidden_dims=[8]),
            T.conditional_spline_autoregressive(2, 3, [8], num_bins=4),
            T.conditional_inverse_autoregressive(2, 3, [8]),
            T.conditional_masked_autoregressive(2, 3, [8]),
            T.conditional_additive_coupling(2, 3, parity=1, hidden_dims=[8]),
        ]
        self.flows = _perturb(torch.nn.ModuleList(flows).double())
        self.encoder = torch.nn.Linear(5, 2).double()
        self.decoder = torch.nn.Linear(5, 2).double()
        self.scale = 0.7  # of the guide's base

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", _normal(x.new_zeros(2), 1.0))
            h = torch.cat([z, x.expand(z.shape[:-1] + x.shape[-1:])], -1)
            return pyro.sample("y", _normal(self.decoder(h), 0.5), obs=y)

    def base(self, x: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        return _normal(self.encoder(torch.cat([x, y], -1)), self.scale)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        pyro.module("encoder", self.encoder)
        pyro.module("flows", self.flows)
        y = x.new_zeros(x.shape[0], 2) if y is None else y
        with pyro.plate("data", x.shape[0]):
            q = dist.ConditionalTransformedDistribution(self.base(x, y), list(self.flows))
            return pyro.sample("z", q.condition(x))
