"""Flow matching on a Gaussian: the conditional targets average to the marginal velocity field,
that field transports the data to the base (exact density through the ODE), also when it has
no parameters, and the Pyro sites give exactly the regression loss."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO
from torch.distributions import Normal

from pyro_gen.diffusion import FlowMatching, reflow_pairs
from pyro_gen.infer import fit
from pyro_gen.transforms.continuous import ContinuousFlow, cnf

torch.set_num_threads(1)

M = torch.tensor([1.0, -0.5], dtype=torch.float64)
S = torch.tensor([[0.36, 0.18], [0.18, 0.25]], dtype=torch.float64)
EYE = torch.eye(2, dtype=torch.float64)


def marginal_field(y: torch.Tensor, s: torch.Tensor, sigma_min: float) -> torch.Tensor:
    """:math:`E[u_s \\mid x_s = y]` for x ~ N(M, S), z ~ N(0, I), by Gaussian conditioning."""
    s = s.reshape(s.shape + (1, 1))
    c = sigma_min + (1 - sigma_min) * s
    cov_x = (1 - s) ** 2 * S + c**2 * EYE
    cov_ux = (1 - sigma_min) * c * EYE - (1 - s) * S
    gain = cov_ux @ torch.linalg.inv(cov_x)
    centred = y - (1 - s[..., 0]) * M
    return -M + (gain @ centred[..., None])[..., 0]


class MarginalField(torch.nn.Module):
    def __init__(self, sigma_min: float) -> None:
        super().__init__()
        self.sigma_min = sigma_min
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, z, t):
        return marginal_field(z, t.to(z).expand(z.shape[:-1]), self.sigma_min) + 0 * self.dummy


def test_conditional_targets_average_to_the_marginal_field():
    # least squares of the conditional target u on (x_s, 1) recovers E[u | x_s]: the marginal
    # field is linear here, so the regression is exact in the limit of many samples
    torch.manual_seed(0)
    fm = FlowMatching(cnf(2, (8,)), sigma_min=0.1)
    n = 400_000
    x = M + torch.randn(n, 2, dtype=torch.float64) @ torch.linalg.cholesky(S).T
    z = torch.randn(n, 2, dtype=torch.float64)
    for s_val in (0.2, 0.5, 0.8):
        s = torch.full((n,), s_val, dtype=torch.float64)
        x_s, u = fm.path(x, z, s)
        design = torch.cat([x_s, torch.ones(n, 1, dtype=torch.float64)], -1)
        coef = torch.linalg.lstsq(design, u).solution
        probe = torch.tensor([[0.3, -0.2], [1.5, 0.4]], dtype=torch.float64)
        fitted = torch.cat([probe, torch.ones(2, 1, dtype=torch.float64)], -1) @ coef
        exact = marginal_field(probe, torch.full((2,), s_val, dtype=torch.float64), 0.1)
        assert torch.allclose(fitted, exact, atol=0.02), (s_val, fitted, exact)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_marginal_field_transports_the_data_to_the_base(sigma_min):
    # as the flow's dynamics the marginal field gives the data's exact density at t0 (smoothed
    # by sigma_min) through the same ODE, and carries base draws to the data's moments
    torch.manual_seed(1)
    flow = ContinuousFlow(MarginalField(sigma_min), (2,), rtol=1e-7, atol=1e-7)
    fm = FlowMatching(flow, sigma_min=sigma_min)
    x = M + torch.randn(8, 2, dtype=torch.float64)
    true = torch.distributions.MultivariateNormal(M, S + sigma_min**2 * EYE).log_prob(x)
    assert (fm.log_prob(x) - true).abs().max() < 1e-3
    y = fm.transport(torch.randn(4000, 2, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    assert (y.mean(0) - M).abs().max() < 0.05
    assert (torch.cov(y.T) - S - sigma_min**2 * EYE).abs().max() < 0.04


def test_predictive_draws_from_the_model_without_data():
    # without data the model is z ~ N(0, I) carried by the ODE to "x": a vectorized
    # Predictive gives each predictive sample its own base draws and their images
    torch.manual_seed(2)
    fm = FlowMatching(cnf(2, (8,), rtol=1e-4, atol=1e-4).double())
    draws = Predictive(fm.model, num_samples=3, parallel=True)(num_samples=5)
    z, x = draws["z"], draws["x"]
    assert z.shape == x.shape == (3, 5, 2) and not torch.equal(z[0], z[1])
    torch.testing.assert_close(x, fm.transport(z.reshape(15, 2)).reshape(3, 5, 2))


def test_elbo_of_the_model_is_the_flow_matching_loss():
    torch.manual_seed(2)
    fm = FlowMatching(cnf(2, (8,)).double(), sigma_min=0.05, time_samples=3)
    x = torch.randn(5, 2, dtype=torch.float64)
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss(fm.model, fm.guide, x)
    pyro.set_rng_seed(3)
    tr = poutine.trace(fm.guide).get_trace(x)
    s, z = tr.nodes["t"]["value"], tr.nodes["z"]["value"]
    assert s.shape == (3, 5) and z.shape == (3, 5, 2)
    x_s = (1 - s[..., None]) * x + (0.05 + 0.95 * s[..., None]) * z
    with torch.no_grad():
        v = fm.flow.dynamics(x_s.reshape(-1, 2), s.reshape(-1)).reshape(3, 5, 2)
    expected = 0.5 * (v - (0.95 * z - x)).pow(2).sum(-1).mean(0).sum()
    assert abs(loss - float(expected)) < 1e-8 * max(1.0, abs(loss))


def test_vectorized_particles_give_each_particle_its_own_flow_matching_loss():
    # Pyro's vectorized particles put a plate at dim -3: "z" is then (P, K, B, D), and each
    # particle's regression must use its own base draw (an expand to (K, B, D) refused it)
    torch.manual_seed(2)
    fm = FlowMatching(cnf(2, (8,)).double(), sigma_min=0.05, time_samples=3)
    x = torch.randn(5, 2, dtype=torch.float64)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=2)
    pyro.set_rng_seed(3)
    loss = elbo.loss(fm.model, fm.guide, x)
    pyro.set_rng_seed(3)
    with pyro.plate("particles", 4, dim=-3):
        tr = poutine.trace(fm.guide).get_trace(x)
    s, z = tr.nodes["t"]["value"], tr.nodes["z"]["value"]
    assert s.shape == (4, 3, 5) and z.shape == (4, 3, 5, 2)
    x_s = (1 - s[..., None]) * x + (0.05 + 0.95 * s[..., None]) * z
    with torch.no_grad():
        v = fm.flow.dynamics(x_s.reshape(-1, 2), s.reshape(-1)).reshape(4, 3, 5, 2)
    expected = 0.5 * (v - (0.95 * z - x)).pow(2).sum(-1).mean(1).sum(-1).mean(0)
    assert abs(loss - float(expected)) < 1e-8 * max(1.0, abs(loss))


class AffineInX(torch.nn.Module):
    """:math:`f(y, t) = G(t) y + h(t)`, an MLP in t: the family the exact field lies in."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(1, 32), torch.nn.SiLU(), torch.nn.Linear(32, 6)
        )

    def forward(self, y, t):
        out = self.net(t.to(y).expand(y.shape[:-1])[..., None])
        gain, bias = out[..., :4].reshape(*out.shape[:-1], 2, 2), out[..., 4:]
        return (gain @ y[..., None])[..., 0] + bias


def test_fit_trains_the_flow_by_regression():
    torch.manual_seed(4)
    pyro.set_rng_seed(4)
    x = (M + torch.randn(4096, 2, dtype=torch.float64) @ torch.linalg.cholesky(S).T).float()
    fm = FlowMatching(ContinuousFlow(AffineInX(), (2,), rtol=1e-4, atol=1e-4), time_samples=4)
    true = torch.distributions.MultivariateNormal(M.float(), S.float()).log_prob(x[:256])
    assert (true - fm.log_prob(x[:256])).mean() > 0.5  # the untrained flow is far off
    optim = pyro.optim.ClippedAdam({"lr": 3e-3, "lrd": 0.05 ** (1 / 300)})
    fit(fm, x, steps=300, batch_size=256, optim=optim, progress=False, clear_params=True)
    gap = true - fm.log_prob(x[:256])
    # the KL estimate E[log p - log q] near zero; pointwise errors partly cancel in it
    assert abs(float(gap.mean())) < 0.05 and float(gap.abs().mean()) < 0.15


def test_reflow_and_bad_input():
    fm = FlowMatching(cnf(2, (8,)), objective="rectified")
    x, z = reflow_pairs(fm, 6, rtol=1e-3, atol=1e-3)
    loss = Trace_ELBO().loss(fm.model, fm.guide, x, z)  # coupled pairs: no "z" site
    assert loss > 0
    with pytest.raises(ValueError, match="needs objective='rectified'"):
        Trace_ELBO().loss(FlowMatching(cnf(2, (8,))).model, fm.guide, x, z)
    with pytest.raises(ValueError, match="coupling z must be shaped like x"):
        Trace_ELBO().loss(fm.model, fm.guide, x, z[:3])
    with pytest.raises(TypeError, match="flow matching trains one ContinuousFlow"):
        FlowMatching(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="objective must be one of"):
        FlowMatching(cnf(2, (8,)), objective="ot")


def test_time_mlp_dynamics_read_one_time_as_per_example_times():
    # the ODE solve passes one time for the batch, flow matching one per example: both must be
    # the same field, or training and the likelihood would see different networks
    from pyro_gen.flows import CNF

    torch.manual_seed(0)
    model = CNF((2,), hidden_dims=(8, 8), dynamics="time_mlp", rtol=1e-5, atol=1e-5).double()
    f = model.transforms[0].dynamics
    z = torch.randn(3, 2, dtype=torch.float64)
    assert torch.allclose(f(z, torch.tensor(0.3)), f(z, torch.full((3,), 0.3)), atol=1e-12)
    with torch.no_grad():  # the same solve either way (FlowMatching.log_prob runs without grad)
        assert torch.allclose(FlowMatching(model).log_prob(z), model.log_prob(z), atol=1e-10)
    with pytest.raises(ValueError, match="dynamics must be one of"):
        CNF((2,), dynamics="unet")
    with pytest.raises(ValueError, match="equal widths"):
        CNF((2,), hidden_dims=(16, 8), dynamics="time_mlp")


def test_fourier_features_of_the_state(tmp_path):
    # the time_mlp net with fourier_features=m sees [z, sin(2 pi B^T z), cos(2 pi B^T z)], B fixed
    # with std fourier_scale; it is saved with the model, and a model without it has the state
    # dict of runs written before the option
    import math

    from pyro_gen.flows import CNF
    from pyro_gen.nn.time_embedding import TimeMLP

    torch.manual_seed(0)
    plain = CNF((2,), hidden_dims=(8, 8), dynamics="time_mlp")
    assert not any("fourier" in k for k in plain.state_dict())
    model = CNF((2,), hidden_dims=(8, 8), dynamics="time_mlp", fourier_features=500,
                fourier_scale=3.0, rtol=1e-5, atol=1e-5).double()  # fmt: skip
    f = model.transforms[0].dynamics
    B = f.fourier_matrix
    assert B.shape == (2, 500) and abs(float(B.std()) - 3.0) < 0.3
    ref = TimeMLP(2 + 1000, 8, num_layers=2, out_dim=2).double()
    ref.load_state_dict(f.net.state_dict())
    z, t = torch.randn(5, 2, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    proj = 2 * math.pi * z @ B
    feats = torch.cat([z, proj.sin(), proj.cos()], -1)
    assert torch.allclose(f(z, t), ref(feats, t * 1000.0), atol=1e-12)
    assert torch.allclose(f(z, torch.tensor(0.3)), f(z, torch.full((5,), 0.3)), atol=1e-12)
    torch.save(model.state_dict(), tmp_path / "cnf.pt")
    again = CNF((2,), hidden_dims=(8, 8), dynamics="time_mlp", fourier_features=500).double()
    again.load_state_dict(torch.load(tmp_path / "cnf.pt"))
    with torch.no_grad():
        assert torch.equal(again.transforms[0].dynamics(z, t), f(z, t))
    with pytest.raises(ValueError, match="needs vector data and dynamics='time_mlp'"):
        CNF((2,), fourier_features=4)
    with pytest.raises(ValueError, match="fourier_features must be a whole number >= 0"):
        CNF((2,), hidden_dims=(8, 8), dynamics="time_mlp", fourier_features=-1)
    with pytest.raises(ValueError, match="fourier_scale must be positive"):
        CNF((2,), hidden_dims=(8, 8), dynamics="time_mlp", fourier_features=4, fourier_scale=0.0)


@pytest.mark.parametrize("sigma_min", [0.0, 1e-2])
def test_preconditioned_velocity_is_exact_for_gaussian_data(sigma_min):
    # with F = 0 the preconditioned field is c_skip(s) x, which must be the marginal field of
    # N(0, v I) data: compare with Gaussian conditioning, and its ODE must carry N(0, I) back to
    # the data's density (t1 = 2 checks the flow-time scaling)
    from pyro_gen.diffusion import PreconditionedVelocity

    v = 2.5
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    f = PreconditionedVelocity(zero, v**0.5, sigma_min=sigma_min, t0=0.0, t1=2.0)
    y = torch.randn(4, 2, dtype=torch.float64)
    s = torch.rand(4, dtype=torch.float64)
    c = (sigma_min + (1 - sigma_min) * s)[:, None]
    expected = ((1 - sigma_min) * c - (1 - s[:, None]) * v) / ((1 - s[:, None]) ** 2 * v + c**2)
    assert torch.allclose(f(y, 2 * s), expected * y / 2, atol=1e-12)
    flow = ContinuousFlow(f, (2,), t1=2.0, rtol=1e-9, atol=1e-9)
    lp = FlowMatching(flow).log_prob(y)
    scale = (v + sigma_min**2) ** 0.5  # at s = 0 the path is data + sigma_min z
    truth = torch.distributions.Normal(0.0, scale).log_prob(y).sum(-1)
    assert torch.allclose(lp, truth, atol=1e-6)
    with pytest.raises(ValueError, match="data_std must be positive"):
        PreconditionedVelocity(zero, 0.0)
    # FlowMatching(data_std=...) wraps the flow's own network once, for its log_prob too
    plain = cnf(2, (8,))
    FlowMatching(plain, data_std=2.0, sigma_min=sigma_min)
    FlowMatching(plain, data_std=2.0, sigma_min=sigma_min)
    assert isinstance(plain.dynamics, PreconditionedVelocity)
    assert not isinstance(plain.dynamics.net, PreconditionedVelocity)


C = 0.5  # the data of the parameter-free field: N(0, C^2 I)


class ExactField(torch.nn.Module):
    """A user's exact velocity field with no parameters: for data N(0, C^2 I) the
    rectified-flow path x_s = (1 - s) x + s z has the marginal field
    u(x_s) = (s - (1 - s) C^2) / ((1 - s)^2 C^2 + s^2) x_s, linear in x_s."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) if t.dim() else t.to(x.dtype)
        return (s - (1 - s) * C**2) / ((1 - s) ** 2 * C**2 + s**2) * x


def test_a_parameter_free_exact_field_draws_and_scores_the_data():
    """Its draws, its generative program under Predictive and its density are the data's;
    they failed with a bare StopIteration (the base draws took their dtype from the field's
    first parameter)."""
    flow = ContinuousFlow(ExactField(), (2,), rtol=1e-7, atol=1e-7)
    fm = FlowMatching(flow, objective="rectified")
    draws = fm.sample(4000, generator=torch.Generator().manual_seed(0))
    assert draws.dtype == torch.get_default_dtype()
    assert abs(float(draws.std()) - C) < 0.02 and abs(float(draws.mean())) < 0.02
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    exact = Normal(0.0, C).log_prob(x).sum(-1)
    assert torch.allclose(fm.log_prob(x), exact, atol=1e-4)
    pyro.set_rng_seed(0)
    program = Predictive(fm.model, num_samples=2)(None, num_samples=3)
    # the program's draw is the ODE's image of its base site: the flow's own transport
    z = program["z"].reshape(-1, 2)
    assert torch.allclose(program["x"].reshape(-1, 2), fm.transport(z), atol=1e-6)
    assert torch.allclose(fm.transport(z), C * z, atol=1e-4)  # the linear map N(0,1) -> N(0,C^2)
