"""Pyro's NeuTra example (``examples/neutra.py``) with pyro_gen's flows in place of Pyro's:
an :class:`~pyro.infer.autoguide.AutoNormalizingFlow` guide is trained on a banana-shaped
2-D density with SVI, then NUTS samples the model reparameterized by
:class:`~pyro.infer.reparam.NeuTraReparam` (neural transport: HMC in the guide's base
space, where the banana is nearly a standard Normal), and the draws are pushed back with
``neutra.transform_sample``. A second program puts a pyro_gen transform inside a
``TransformedDistribution`` prior and samples it with
:class:`~pyro.infer.reparam.TransformReparam` (HMC on the base noise).

Everything here is plain Pyro; pyro_gen enters only as the ``init_transform_fn`` of the
autoguide and as the transforms of the prior. The targets have exact answers: the
banana's moments in closed form (:func:`banana_moments`), the flow-prior posterior by
quadrature on a grid of the base space (:func:`flow_prior_posterior_moments`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.transforms import ComposeTransformModule
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormalizingFlow
from pyro.infer.reparam import NeuTraReparam, TransformReparam

from pyro_gen.transforms import (
    affine_coupling,
    inverse_autoregressive,
    permute,
    residual_block,
    spline_coupling,
)

# The example's defaults: ``--param-a 1.15 --param-b 1.0``, correlation 0.9.
A, B, RHO = 1.15, 1.0, 0.9
# ``--param-b 0.5`` for the short NUTS runs: at b = 1 the arms (x1 growing as u0^2) leave
# NeuTra's base-space posterior with polynomial tails that flows with linear tails cannot
# remove; a few hundred draws then miss them and the chain's s.e. understates its error
# (E x0^2 came out 3-5 s.e. low in most of 18 seeded runs of 500 draws; at b = 0.5, within
# 1.5 s.e. in 5 of 5).
B_MILD = 0.5


class BananaShaped(dist.TorchDistribution):
    r"""The example's banana: :math:`u \sim \mathcal{N}(0, [[1, \rho], [\rho, 1]])` bent by

    .. math::

        x_0 = a u_0, \qquad x_1 = u_1 / a + b (u_0^2 + a^2),

    a map with unit Jacobian, so :math:`\log p(x) = \log \mathcal{N}(u(x))`.
    """

    arg_constraints = {"a": constraints.positive, "b": constraints.real}
    support = constraints.real_vector

    def __init__(self, a: float, b: float, rho: float = RHO) -> None:
        self.a, self.b, self.rho = float(a), float(b), float(rho)
        cov = torch.tensor([[1.0, self.rho], [self.rho, 1.0]])
        self.gaussian = dist.MultivariateNormal(torch.zeros(2), covariance_matrix=cov)
        super().__init__(event_shape=(2,), validate_args=False)

    def sample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        u = self.gaussian.sample(torch.Size(sample_shape))
        x0 = self.a * u[..., 0]
        x1 = u[..., 1] / self.a + self.b * (u[..., 0] ** 2 + self.a**2)
        return torch.stack([x0, x1], -1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        u0 = value[..., 0] / self.a
        u1 = self.a * (value[..., 1] - self.b * (u0**2 + self.a**2))
        gaussian = self.gaussian
        if value.dtype != gaussian.loc.dtype:
            gaussian = dist.MultivariateNormal(
                gaussian.loc.to(value), covariance_matrix=gaussian.covariance_matrix.to(value)
            )
        return gaussian.log_prob(torch.stack([u0, u1], -1))


def banana_moments(a: float = A, b: float = B, rho: float = RHO) -> dict[str, float]:
    """Exact moments of :class:`BananaShaped`: with :math:`E u_0^2 = 1`,
    :math:`\\operatorname{Var} u_0^2 = 2` and odd Gaussian moments zero,
    :math:`E x_1 = b(1 + a^2)`, :math:`\\operatorname{Var} x_0 = a^2`,
    :math:`\\operatorname{Var} x_1 = 1/a^2 + 2b^2`, :math:`\\operatorname{Cov} = \\rho`."""
    return {
        "mean0": 0.0,
        "mean1": b * (1.0 + a * a),
        "var0": a * a,
        "var1": 1.0 / (a * a) + 2.0 * b * b,
        "cov01": rho,
    }


def banana_cdf(
    c1: float, c0: float = math.inf, a: float = A, b: float = B, rho: float = RHO
) -> float:
    r""":math:`P(x_0 \le c_0, x_1 \le c_1)` by quadrature over :math:`u_0`: given :math:`u_0`,
    :math:`u_1 \sim \mathcal{N}(\rho u_0, 1 - \rho^2)` and :math:`x_1 \le c_1` iff
    :math:`u_1 \le a (c_1 - b(u_0^2 + a^2))`.

    Probabilities are what a short chain estimates reliably: the moments of :math:`x_1` are
    carried by the banana's arms (:math:`x_1` grows as :math:`u_0^2`), which no flow with
    linear tails maps to light tails, so NeuTra's base-space posterior has polynomial tails
    there that a few hundred draws do not reach."""
    u0 = torch.linspace(-12.0, 12.0, 24_001, dtype=torch.float64)
    density = torch.distributions.Normal(0.0, 1.0).log_prob(u0).exp()
    bound = (a * (c1 - b * (u0**2 + a * a)) - rho * u0) / math.sqrt(1.0 - rho * rho)
    inside = torch.special.ndtr(bound) * (a * u0 <= c0)
    return float(torch.trapezoid(density * inside, u0))


def model(a: float, b: float, rho: float = RHO) -> None:
    """The example's model: one 2-D latent site with the banana's density."""
    pyro.sample("x", BananaShaped(a, b, rho))


def funnel() -> None:
    """A funnel with a constrained site (what ``NeuTraReparam`` maps through ``biject_to``):
    :math:`s \\sim \\operatorname{LogNormal}(0, 1)`, :math:`y \\mid s \\sim \\mathcal{N}(0, s)`,
    so :math:`\\log s \\sim \\mathcal{N}(0, 1)` and :math:`E y^2 = E s^2 = e^2`."""
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    pyro.sample("y", dist.Normal(0.0, scale))


# -------------------------------------------------------------------- flows of the guide
# Each is an ``init_transform_fn`` for AutoNormalizingFlow: latent dim in, transform out.


def iaf_flow(dim: int, hidden: int = 16) -> torch.nn.Module:
    """One pyro_gen IAF layer: what ``AutoIAFNormal`` builds from Pyro's."""
    return inverse_autoregressive(dim, [hidden])


def spline_flow(dim: int, hidden: int = 16) -> torch.nn.Module:
    """One neural-spline coupling layer (bound 8: the banana's arms reach past 5)."""
    return spline_coupling(dim, hidden_dims=[hidden], num_bins=8, bound=8.0)


def stacked_flow(dim: int, hidden: int = 16) -> ComposeTransformModule:
    """Several pyro_gen layers with permutations between them, composed as Pyro's
    ``iterated`` composes its layers (one ``ComposeTransformModule``)."""
    return ComposeTransformModule(
        [
            inverse_autoregressive(dim, [hidden]),
            permute(dim),
            affine_coupling(dim, hidden_dims=[hidden]),
            permute(dim, "random", seed=0),
            spline_coupling(dim, hidden_dims=[hidden], parity=1, bound=8.0),
        ]
    )


def residual_flow(dim: int, hidden: int = 16) -> torch.nn.Module:
    """One invertible residual block (exact log-det at this size; its sampling direction is
    a fixed-point solve, so it cannot be traced: NUTS runs it with ``jit_compile=False``)."""
    return residual_block(dim, [hidden])


FLOWS: dict[str, Callable[[int], torch.nn.Module]] = {
    "iaf": iaf_flow,
    "spline": spline_flow,
    "stacked": stacked_flow,
}


# ---------------------------------------------------------------- the example's workflow


def fit_guide(
    guide: AutoNormalizingFlow, steps: int, *args: object, lr: float = 1e-2
) -> list[float]:
    """The example's ``fit_guide``: Pyro's own SVI loop with Adam on ``Trace_ELBO``."""
    svi = SVI(guide.model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    return [svi.step(*args) for _ in range(steps)]


def neutra_model(guide: AutoNormalizingFlow) -> tuple[NeuTraReparam, Callable]:
    """The trained guide, frozen, as a ``NeuTraReparam`` of its model, as the example does."""
    neutra = NeuTraReparam(guide.requires_grad_(False))
    return neutra, poutine.reparam(guide.model, config=lambda _: neutra)


def run_nuts(
    fn: Callable,
    *args: object,
    warmup: int,
    samples: int,
    jit_compile: bool = False,
    init_params: dict[str, torch.Tensor] | None = None,
) -> MCMC:
    """The example's ``run_hmc`` (one chain, no progress bar)."""
    kernel = NUTS(fn, jit_compile=jit_compile, ignore_jit_warnings=True)
    mcmc = MCMC(
        kernel,
        warmup_steps=warmup,
        num_samples=samples,
        initial_params=init_params,
        disable_progbar=True,
    )
    mcmc.run(*args)
    return mcmc


# ------------------------------------------------ a pyro_gen transform inside the prior

FLOW_PRIOR_NOISE = 0.7


def flow_prior_transforms(seed: int = 0) -> list[torch.nn.Module]:
    """A fixed (untrained) non-linear bijection of the plane: an affine coupling, a swap and a
    spline coupling, their networks' weights drawn from ``seed`` so the map is far from the
    identity (the helpers start at the identity)."""
    transforms = [
        affine_coupling(2, hidden_dims=[8]),
        permute(2),
        spline_coupling(2, hidden_dims=[8], num_bins=4, bound=4.0),
    ]
    g = torch.Generator().manual_seed(seed)
    for t in transforms:
        for p in t.parameters():
            p.data = 0.4 * torch.randn(p.shape, generator=g)
        t.requires_grad_(False)
    return transforms


def flow_prior_model(transforms: Sequence[torch.nn.Module], y: torch.Tensor) -> None:
    """A latent point whose prior is a flow (``TransformedDistribution`` of a standard Normal
    through pyro_gen transforms), observed through Gaussian noise."""
    base = dist.Normal(y.new_zeros(2), 1.0).to_event(1)
    x = pyro.sample("x", dist.TransformedDistribution(base, list(transforms)))
    pyro.sample("y", dist.Normal(x, FLOW_PRIOR_NOISE).to_event(1), obs=y)


def transform_reparam_model(transforms: Sequence[torch.nn.Module]) -> Callable:
    """:func:`flow_prior_model` with HMC on the base noise (site ``x_base``)."""
    return poutine.reparam(
        lambda y: flow_prior_model(transforms, y), config={"x": TransformReparam()}
    )


def flow_prior_posterior_moments(
    transforms: Sequence[torch.nn.Module], y: torch.Tensor, half_width: float = 7.0, n: int = 401
) -> dict[str, torch.Tensor]:
    """Posterior moments of :func:`flow_prior_model` by the trapezoid rule on an
    ``n`` x ``n`` grid of the base space: the posterior density of the base noise
    :math:`u` is :math:`\\propto \\mathcal{N}(u; 0, I)\\,\\mathcal{N}(y; t(u), \\sigma^2 I)`,
    which needs only the forward map (float64)."""
    ticks = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    u = torch.stack(torch.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2)
    x = u
    with torch.no_grad():
        for t in transforms:
            x = copy.deepcopy(t).double()(x)
    y = y.double()
    log_w = -0.5 * (u**2).sum(-1) - 0.5 * ((y - x) ** 2).sum(-1) / FLOW_PRIOR_NOISE**2
    edge = torch.ones(n, dtype=torch.float64)
    edge[[0, -1]] = 0.5
    log_w = log_w + (edge[:, None] * edge[None, :]).log().reshape(-1)
    w = torch.softmax(log_w, 0)
    mean = (w[:, None] * x).sum(0)
    centred = x - mean
    return {
        "x_mean": mean,
        "x_var": (w[:, None] * centred**2).sum(0),
        "u_mean": (w[:, None] * u).sum(0),
        "mass_on_edge": w.reshape(n, n)[[0, -1]].sum() + w.reshape(n, n)[:, [0, -1]].sum(),
    }
