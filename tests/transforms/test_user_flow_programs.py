"""pyro_gen flows inside the Pyro programs of Pyro's flow and SVI tutorials, unchanged.

Each program is one a Pyro user writes (an ``AutoNormalizingFlow`` guide for a model with
a plate and several latent sites, a flow prior in a VAE, a conditional flow as the
amortized guide of a CVAE, density estimation with ``obs=data`` in a plate), run under
what users vary: ``Trace_ELBO`` with several (vectorized) particles,
``TraceMeanField_ELBO``, ``TraceGraph_ELBO``, ``RenyiELBO``, ``poutine.scale`` and
``condition``, ``Predictive``, extra batch dims, float64 built by hand, saving and
restoring. Every loss is checked against the same bound computed by hand from the values
the guide drew, with each flow density taken by the change of variables through an
autograd Jacobian (float64), and every gradient against finite differences of the loss; a
flow that is an affine map is checked against its closed-form Gaussian.
"""

from __future__ import annotations

import math
import pickle

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as PT
import pytest
import torch
from pyro import poutine
from pyro.infer import (
    Predictive,
    RenyiELBO,
    Trace_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
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


@pytest.mark.parametrize("elbo", [*ELBOS, "renyi"])
def test_autonormalizingflow_loss_is_the_change_of_variables_bound(elbo: str) -> None:
    """Pyro's ``AutoNormalizingFlow`` with a pyro_gen flow over a global and N local
    latents: the loss is minus the mean over particles of ``log p(x, mu, z) - log q``, with
    ``q`` by autograd; vectorized particles are distinct draws, not one broadcast."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, dtype=F64)
    guide = AutoNormalizingFlow(_global_local_model, _guide_flow)
    guide(x)  # builds the flow (ActNorm initialises on this first draw)
    seen: list = []
    objective = RenyiELBO(0.5, num_particles=3, max_plate_nesting=1) if elbo == "renyi" else None
    objective = objective or ELBOS[elbo]()
    loss = objective.loss(_global_local_model, _recording(guide, seen), x)

    mu = torch.cat([s["mu"].reshape(-1, 2) for s in seen])
    z = torch.cat([s["z"].reshape(-1, 3, 2) for s in seen])
    assert mu.dtype == F64 and len(mu) in (2, 3) and len(set(mu[:, 0].tolist())) == len(mu)
    latent = torch.cat([mu, z.reshape(len(z), -1)], -1)  # AutoContinuous packs sites in order
    base = guide.get_base_dist()
    log_q = _autograd_log_density(list(guide.get_transform().parts), base.log_prob, latent)
    log_w = _global_local_log_joint(x, mu, z) - log_q
    expected = -log_w.mean()
    if elbo == "renyi":  # the bound of order alpha = 1/2: a log-mean of w^(1/2), times 2
        expected = -2 * (torch.logsumexp(log_w / 2, 0) - math.log(len(log_w)))
    assert math.isclose(loss, float(expected), rel_tol=1e-12)


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
    log_prior = _autograd_log_density(vae.prior_flow, base.log_prob, z.reshape(-1, 2)).reshape(
        z.shape[:2]
    )
    with torch.no_grad():
        log_lik = _normal(vae.decoder(z), 0.5).log_prob(x)
        log_q = _normal(*vae.encode(x)).log_prob(z)
    expected = -(20 / 4) * (log_lik + log_prior - log_q).sum(-1).mean()
    assert math.isclose(loss, float(expected), rel_tol=1e-12)
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


@pytest.mark.parametrize(
    "make",
    [
        lambda: T.affine_coupling(3, hidden_dims=[8]),
        lambda: T.InvertibleConv1x1((2, 2, 2)),
        lambda: T.spline_coupling((2, 2, 2), hidden_channels=4, num_blocks=1, num_bins=4),
    ],
    ids=["vector", "conv1x1", "image_spline"],
)
def test_a_base_with_its_event_dims_as_batch_dims_gets_the_flows_event(make) -> None:
    """A base without ``.to_event`` (``Normal(zeros(D), 1)``, as Pyro's tutorial writes
    it): the transform's ``domain.event_dim`` makes those dims the event, as torch does for
    its own transforms, and the density is the ``.to_event`` base's; extra base dims stay
    batch dims."""
    torch.manual_seed(8)
    t = _perturb(make())
    shape, k = t.event_shape, len(t.event_shape)
    assert t.domain.event_dim == t.codomain.event_dim == k
    plain = dist.TransformedDistribution(dist.Normal(torch.zeros(shape), 1.0), [t])
    evented = dist.TransformedDistribution(dist.Normal(torch.zeros(shape), 1.0).to_event(k), [t])
    assert plain.event_shape == shape and plain.batch_shape == ()
    assert plain.support.event_dim == k
    x = evented.sample((4,))
    torch.testing.assert_close(plain.log_prob(x), evented.log_prob(x))
    batched = dist.TransformedDistribution(dist.Normal(torch.zeros(5, *shape), 1.0), [t])
    assert batched.batch_shape == (5,) and batched.log_prob(x[:, None]).shape == (4, 5)


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


@pytest.mark.parametrize("elbo", ["trace_vectorized", "tracegraph", "trace_sequential"])
def test_cvae_with_a_conditional_flow_guide_loss_is_the_bound(elbo: str) -> None:
    """Each data point's ``q(z_i | x_i, y_i)`` is its own context's flow: the loss equals
    the bound computed point by point, with each flow conditioned on that one ``x_i`` and
    its density by autograd."""
    torch.manual_seed(2)
    cvae = _CVAE()
    x, y = torch.randn(3, 3, dtype=F64), torch.randn(3, 2, dtype=F64)
    seen: list = []

    def guide(x, y=None):
        z = cvae.guide(x, y)
        seen.append(z.detach())
        return z

    loss = ELBOS[elbo]().loss(cvae.model, guide, x, y)
    z = torch.cat([s.reshape(-1, 3, 2) for s in seen])
    expected = 0.0
    with torch.no_grad():
        base = cvae.base(x, y)
        loc = cvae.decoder(torch.cat([z, x.expand(len(z), 3, 3)], -1))
    for i in range(3):
        flows = [t.condition(x[i]) for t in cvae.flows]
        base_i = _normal(base.base_dist.loc[i], 0.7)
        log_q = _autograd_log_density(flows, base_i.log_prob, z[:, i])
        log_p = _normal(torch.zeros(2, dtype=F64), 1.0).log_prob(z[:, i])
        log_p = log_p + _normal(loc[:, i], 0.5).log_prob(y[i])
        expected = expected - (log_p - log_q).mean()
    assert math.isclose(loss, float(expected), rel_tol=1e-12)


@pytest.mark.parametrize("parallel", [False, True])
def test_predictive_draws_the_cvae_guide_per_context(parallel: bool) -> None:
    """``Predictive(model, guide=...)``, vectorized or not: ``(S, N, 2)`` latents and
    predictions, and the latents of data point ``i`` come from ``x_i``'s flow. With a base
    of scale 1e-9 every draw is the base mean pushed through the flows, so each is
    compared with the flows conditioned on that one ``x_i``."""
    torch.manual_seed(3)
    cvae = _CVAE()
    cvae.scale = 1e-9
    x = torch.randn(4, 3, dtype=F64)
    out = Predictive(cvae.model, guide=cvae.guide, num_samples=5, parallel=parallel)(x)
    assert out["z"].shape == (5, 4, 2) and out["y"].shape == (5, 4, 2)
    assert out["z"].dtype == F64
    loc = cvae.base(x, x.new_zeros(4, 2)).base_dist.loc.detach()
    for i in range(4):
        z = loc[i]
        for t in cvae.flows:
            z = t.condition(x[i])(z)
        torch.testing.assert_close(out["z"][:, i], z.expand(5, 2), atol=1e-6, rtol=0)
    assert not torch.allclose(out["z"][0, 0], out["z"][0, 1], atol=1e-3)


# ------------------------------------------------------------------ density estimation


def _affine_flow() -> list:
    """Layers whose composition is an affine map ``x = A u + b`` (in float32, as most
    users build them): the density is the Gaussian ``N(b, A A^T)``."""
    layers = [T.ActNorm(3), T.invertible_conv1x1(3), T.permute(3, "random", seed=1), T.ActNorm(3)]
    layers[0](torch.randn(64, 3))  # data-dependent initialisation, as a first batch does
    layers[3](2.0 + 3.0 * torch.randn(64, 3))
    return [_perturb(t, 0.3) for t in layers]


def _closed_form(layers: list) -> dist.MultivariateNormal:
    forward = _compose(layers)
    with torch.no_grad():
        b = forward(torch.zeros(3))
        a = (forward(torch.eye(3)) - b).T  # columns: images of the unit vectors
    return dist.MultivariateNormal(b.double(), covariance_matrix=(a @ a.T).double())


def _density_model(layers: list, how: str):
    base = _normal(torch.zeros(3), 1.0)

    def model(x: torch.Tensor | None = None, n: int = 0) -> torch.Tensor:
        pyro.module("flow", torch.nn.ModuleList(layers))
        flow = dist.TransformedDistribution(base, layers)
        if how == "expand":  # no plate: the batch as one event
            return pyro.sample("x", flow.expand([n]).to_event(1), obs=x)
        with pyro.plate("data", n):
            if how == "scaled":
                with poutine.scale(scale=2.5):
                    return pyro.sample("x", flow, obs=x)
            return pyro.sample("x", flow, obs=x)

    return model


@pytest.mark.parametrize("how", ["plate", "scaled", "expand", "condition"])
def test_density_estimation_loss_is_the_closed_form_gaussian(how: str) -> None:
    """``pyro.sample("x", flow, obs=data)`` with an empty guide: ``Trace_ELBO`` (vectorized
    particles too) is minus the closed-form log-likelihood, times ``poutine.scale``'s
    factor; ``poutine.condition`` in place of ``obs`` and ``flow.expand([N]).to_event(1)``
    in place of the plate give the same."""
    torch.manual_seed(4)
    layers = _affine_flow()
    x = torch.randn(6, 3) * 2.0
    model = _density_model(layers, how)
    args = (x, 6)
    if how == "condition":
        model, args = poutine.condition(model, data={"x": x}), (None, 6)
    expected = -_closed_form(layers).log_prob(x.double()).sum() * (2.5 if how == "scaled" else 1)
    for elbo in (Trace_ELBO(), Trace_ELBO(num_particles=3, vectorize_particles=True)):
        loss = elbo.loss(model, lambda *_: None, *args)
        assert math.isclose(loss, float(expected), rel_tol=1e-5)


@pytest.mark.parametrize("parallel", [False, True])
def test_predictive_draws_have_the_closed_form_moments(parallel: bool) -> None:
    """``Predictive(model, num_samples=S)`` of the density model: ``(S, N, 3)`` draws whose
    mean and covariance are the closed form's (mean within 5 standard errors)."""
    torch.manual_seed(5)
    layers = _affine_flow()
    exact = _closed_form(layers)
    model = _density_model(layers, "plate")
    draws = Predictive(model, num_samples=40, parallel=parallel)(None, 50)["x"]
    assert draws.shape == (40, 50, 3)
    flat = draws.reshape(-1, 3).double()
    se = (exact.covariance_matrix.diagonal() / len(flat)).sqrt()
    assert bool(((flat.mean(0) - exact.mean).abs() < 5 * se).all())
    cov = torch.cov(flat.T)
    scale = exact.covariance_matrix.diagonal().sqrt()
    corr_err = (cov - exact.covariance_matrix) / (scale[:, None] * scale[None, :])
    assert float(corr_err.abs().max()) < 0.15


# ------------------------------------------------------------------ gradients


def _assert_gradients_are_finite_differences(loss_and_grads, loss, params, h=1e-6) -> None:
    """Each parameter's gradient from ``loss_and_grads`` (at its largest entry) is the
    central difference of the loss, both evaluated on the same draws (same seed; the guide
    is reparameterized, so its draws move smoothly with its parameters). A gradient through
    a stale cached value or a detached path would differ."""
    for p in params:
        p.grad = None
    pyro.set_rng_seed(11)
    loss_and_grads()
    assert all(p.grad is not None for p in params)
    for p in params[:: max(1, len(params) // 8)]:  # eight spread over the layers: time
        i = int(p.grad.abs().argmax())
        values = []
        for step in (h, -2 * h, h):
            with torch.no_grad():
                p.view(-1)[i] += step
            pyro.set_rng_seed(11)
            values.append(loss())
        fd = (values[0] - values[1]) / (2 * h)
        assert math.isclose(fd, float(p.grad.view(-1)[i]), rel_tol=1e-4, abs_tol=1e-6)


@pytest.mark.parametrize("program", ["autonormalizingflow", "vae_flow_prior", "cvae"])
def test_svi_gradients_are_the_finite_differences_of_the_loss(program: str) -> None:
    torch.manual_seed(6)
    elbo = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    if program == "autonormalizingflow":
        x = torch.randn(3, 2, dtype=F64)
        model, guide, args = _global_local_model, None, (x,)
        guide = AutoNormalizingFlow(model, _guide_flow)
        guide(x)
        params = list(guide.get_transform().parameters())
    elif program == "vae_flow_prior":
        vae = _FlowPriorVAE(n_total=8)
        vae.flows.eval()  # the residual block's spectral norm: no power iteration per call
        model, guide, args = vae.model, vae.guide, (torch.randn(4, 3, dtype=F64),)
        params = list(vae.parameters())
    else:
        cvae = _CVAE()
        model, guide = cvae.model, cvae.guide
        args = (torch.randn(3, 3, dtype=F64), torch.randn(3, 2, dtype=F64))
        params = list(cvae.parameters())
    _assert_gradients_are_finite_differences(
        lambda: elbo.loss_and_grads(model, guide, *args),
        lambda: elbo.loss(model, guide, *args),
        params,
    )


# ------------------------------------------------------------------ saving and restoring


def _program(name: str) -> tuple:
    """A program of this file (module, model args) built from the current seed."""
    if name == "cvae":
        return _CVAE(), (torch.randn(3, 3, dtype=F64), torch.randn(3, 2, dtype=F64))
    return _FlowPriorVAE(n_total=8), (torch.randn(4, 3, dtype=F64),)


def _loss(program: torch.nn.Module, args: tuple) -> float:
    pyro.set_rng_seed(5)  # the same draws for every copy compared
    return Trace_ELBO().loss(program.model, program.guide, *args)


@pytest.mark.parametrize("name", ["cvae", "vae_flow_prior"])
def test_trained_programs_restore_bit_for_bit(name: str, tmp_path) -> None:
    """After a few SVI steps: Pyro's param store saved and loaded into modules built afresh
    (another seed, ``pyro.module(..., update_module_params=True)``), ``torch.save`` of the
    whole program and ``pickle`` after ``pyro.module`` all give the same loss on the same
    draws, to the bit."""
    torch.manual_seed(7)
    program, args = _program(name)
    elbo = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    svi = pyro.infer.SVI(program.model, program.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    for _ in range(3):
        svi.step(*args)
    expected = _loss(program, args)
    pyro.get_param_store().save(tmp_path / "params.pt")
    torch.save(program, tmp_path / "program.pt")
    pickled = pickle.dumps(program)

    pyro.clear_param_store()
    torch.manual_seed(123)
    fresh, _ = _program(name)
    pyro.get_param_store().load(tmp_path / "params.pt")
    for site, module in (("encoder", fresh.encoder), ("decoder", fresh.decoder)):
        pyro.module(site, module, update_module_params=True)
    pyro.module("flows", fresh.flows, update_module_params=True)
    assert _loss(fresh, args) == expected
    pyro.clear_param_store()
    assert _loss(torch.load(tmp_path / "program.pt", weights_only=False), args) == expected
    assert _loss(pickle.loads(pickled), args) == expected


# ------------------------------------------------------------------ contexts users pass

CONDITIONAL = {
    "coupling": lambda: T.conditional_affine_coupling(2, 3, hidden_dims=[8]),
    "image_coupling": lambda: T.conditional_affine_coupling(
        (2, 2, 2), 3, hidden_channels=4, num_blocks=1
    ),
    "spline_coupling": lambda: T.conditional_spline_coupling(2, 3, hidden_dims=[8]),
    "maf": lambda: T.conditional_masked_autoregressive(2, 3, [8]),
    "iaf": lambda: T.conditional_inverse_autoregressive(2, 3, [8]),
}


@pytest.mark.parametrize("name", list(CONDITIONAL))
def test_a_class_conditional_flow_takes_one_hot_labels_as_they_come(name: str) -> None:
    """``F.one_hot(y, 3)`` is int64: as a context it gives the float one-hot's density in a
    plate with ``obs=data`` (the image coupling failed with "mat1 and mat2 must have the
    same dtype"); a float32 context for a float64 flow works as well."""
    torch.manual_seed(9)
    t = _perturb(CONDITIONAL[name]())
    shape = t.event_shape
    x, y = torch.randn(5, *shape), torch.tensor([0, 2, 1, 1, 0])
    base = dist.Normal(torch.zeros(shape), 1.0).to_event(len(shape))
    flow = dist.ConditionalTransformedDistribution(base, [t])

    def model(x, context):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", flow.condition(context), obs=x)

    labels = torch.nn.functional.one_hot(y, 3)
    assert labels.dtype == torch.int64
    expected = -flow.condition(labels.float()).log_prob(x).sum().detach()
    assert math.isclose(Trace_ELBO().loss(model, lambda *_: None, x, labels), float(expected))
    t64 = t.double()
    base64 = dist.Normal(torch.zeros(shape, dtype=F64), 1.0).to_event(len(shape))
    flow64 = dist.ConditionalTransformedDistribution(base64, [t64])
    lp = flow64.condition(labels.float()).log_prob(x.double())  # a float32 context
    assert lp.dtype == F64
    assert math.isclose(-float(lp.sum()), float(expected), rel_tol=1e-5)


@pytest.mark.parametrize("name", list(CONDITIONAL))
def test_a_dtype_mismatch_in_a_conditional_flow_is_one_clear_error(name: str) -> None:
    """A float64 context for a float32 flow (refused when conditioning), and float64 data
    for a conditioned float32 transform, name both dtypes and the conversion; torch said
    "mat1 and mat2 must have the same dtype" from inside the network."""
    t = CONDITIONAL[name]()
    x = torch.randn(4, *t.event_shape)
    with pytest.raises(TypeError, match=r"float32 parameters and got a torch.float64 context"):
        t.condition(torch.randn(4, 3, dtype=F64))
    conditioned = t.condition(torch.randn(4, 3))
    for apply in (conditioned, conditioned.inv):
        with pytest.raises(TypeError, match=r"float32 parameters and got torch.float64 input"):
            apply(x.double())


# ------------------------------------------------------------------ the jit


def test_jit_elbo_with_a_residual_flow_prior_is_one_clear_error() -> None:
    """``JitTrace_ELBO`` traces the model with the flow's parameters requiring grad; a
    residual block's density direction takes its log-det from ``torch.autograd.grad``,
    which the trace cannot record: torch said "Cannot insert a Tensor that requires grad
    as a constant". Now the error names the block and the fix, and the program it points
    to (``Trace_ELBO``) gives the by-hand bound."""
    torch.manual_seed(10)
    block = _perturb(T.residual_block(2, [8], tol=1e-12).double(), 0.5)
    x = torch.randn(4, 2, dtype=F64)
    base = _normal(torch.zeros(2, dtype=F64), 1.0)

    def model(x):
        pyro.module("block", block)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.TransformedDistribution(base, [block]))
            pyro.sample("x", _normal(z, 0.5), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", _normal(x / 2, 0.6))

    with pytest.raises(RuntimeError, match="ResidualBlock.*torch.jit.trace.*Trace_ELBO"):
        pyro.infer.JitTrace_ELBO().loss_and_grads(model, guide, x)
    seen: list = []

    def recorded(x):
        z = guide(x)
        seen.append(z.detach())
        return z

    block.eval()  # the exact log-det in 2 dims: the roulette estimate is random
    loss = Trace_ELBO().loss(model, recorded, x)
    z = seen[0]
    log_prior = _autograd_log_density([block], base.log_prob, z)
    log_w = log_prior + _normal(z, 0.5).log_prob(x) - _normal(x / 2, 0.6).log_prob(z)
    assert math.isclose(loss, -float(log_w.sum()), rel_tol=1e-10)
