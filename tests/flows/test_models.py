"""Every ready-made flow: protocol, exact ELBO, normalization, samples vs density, shapes."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_gen.flows import (
    CNF,
    FLOWS,
    MAF,
    NICE,
    NSF,
    FlowModel,
    Glow,
    RealNVP,
    ResidualFlow,
    build,
)

FAST_ODE = dict(method="rk4", options={"step_size": 0.5})

VECTOR = {
    "nice": lambda: NICE((2,), num_layers=4, hidden_dims=(16,)),
    "realnvp": lambda: RealNVP((2,), num_layers=4, hidden_dims=(16,)),
    "glow": lambda: Glow((2,), depth=2, hidden_dims=(16,)),
    "maf": lambda: MAF((2,), num_layers=3, hidden_dims=(16,)),
    "cnf": lambda: CNF((2,), hidden_dims=(16,), **FAST_ODE),
    "nsf": lambda: NSF((2,), num_layers=2, hidden_dims=(16,), spline_bins=4),
    "resflow": lambda: ResidualFlow((2,), num_layers=2, hidden_dims=(16,)),
}
# vector variants of a registered flow, run through the same vector tests
VECTOR_VARIANTS = {
    # the autoregressive spline layers (NSF's default is the coupling)
    "nsf_autoregressive": lambda: NSF(
        (2,), num_layers=2, hidden_dims=(16,), layer="autoregressive", spline_bins=4
    ),
}
ALL_VECTOR = {**VECTOR, **VECTOR_VARIANTS}
IMAGE = {
    "nice": lambda: NICE((4, 4), num_layers=2, hidden_dims=(16,)),
    "realnvp": lambda: RealNVP((1, 4, 4), num_layers=1, hidden_channels=4, num_blocks=1),
    "glow": lambda: Glow((4, 4), depth=1, hidden_channels=4, num_blocks=1),
    "maf": lambda: MAF((1, 4, 4), num_layers=2, hidden_dims=(32,)),
    "cnf": lambda: CNF((1, 4, 4), hidden_dims=(4,), **FAST_ODE),
    "nsf": lambda: NSF(
        (1, 4, 4), num_layers=2, hidden_dims=(32,), layer="autoregressive", spline_bins=4
    ),
    "resflow": lambda: ResidualFlow((1, 4, 4), num_layers=1, hidden_dims=(16,)),
}
# image variants of a registered flow, run through the same image tests
IMAGE_VARIANTS = {
    # multi-scale spline couplings (RealNVP's architecture with the spline element-wise map)
    "nsf_multiscale": lambda: NSF(
        (1, 4, 4), num_layers=1, layer="coupling", hidden_channels=4, num_blocks=1, spline_bins=4
    ),
}
ALL_IMAGE = {**IMAGE, **IMAGE_VARIANTS}


def _perturbed(make) -> FlowModel:
    """Zero-initialised conditioners start at the identity; perturb to get a real density."""
    torch.manual_seed(1)
    flow = make()
    image = len(flow.event_shape) > 1
    data = torch.rand if image else torch.randn
    flow.log_prob(data(64, *flow.event_shape))  # data-dependent init (ActNorm)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return flow


def test_registry_is_complete():
    assert set(FLOWS) == set(VECTOR) == set(IMAGE)


@pytest.mark.parametrize("name", sorted(VECTOR))
def test_svi_smoke_and_exact_elbo(name):
    flow = VECTOR[name]()
    x = torch.randn(32, 2) * torch.tensor([1.0, 0.3]) + 1.0
    svi = SVI(flow.model, flow.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    before = {k: v.detach().clone() for k, v in flow.named_parameters()}
    losses = [svi.step(x) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    assert any((before[k] != v).any() for k, v in flow.named_parameters())
    assert set(pyro.get_param_store().keys()) == {
        f"{flow.name}$$${k}" for k, _ in flow.flow.named_parameters()
    }
    # No latent variables, empty guide: -ELBO is exactly -log p(x).
    elbo = Trace_ELBO().loss(flow.model, flow.guide, x)
    assert elbo == pytest.approx(-flow.log_prob(x).sum().item(), rel=1e-5)
    tr = poutine.trace(flow.model).get_trace(x)
    assert tr.nodes["x"]["is_observed"] and tr.nodes["x"]["fn"].batch_shape == (32,)
    assert [f.name for f in tr.nodes["x"]["cond_indep_stack"]] == ["data"]


@pytest.mark.parametrize("name", sorted(ALL_VECTOR))
def test_density_integrates_to_one_and_matches_samples(name):
    flow = _perturbed(ALL_VECTOR[name])
    n, lim = 241, 8.0
    g = torch.linspace(-lim, lim, n)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        p = flow.log_prob(grid).exp()
    cell = (g[1] - g[0]) ** 2
    assert p.sum() * cell == pytest.approx(1.0, abs=1e-2)
    # samples against the model's own density: mass of the 4 quadrants around the median point
    torch.manual_seed(2)
    s = flow.sample(4000)
    assert s.shape == (4000, 2) and torch.isfinite(s).all()
    c = s.median(0).values
    for sx in (-1, 1):
        for sy in (-1, 1):
            inside = ((grid[:, 0] - c[0]) * sx > 0) & ((grid[:, 1] - c[1]) * sy > 0)
            mass = (p[inside].sum() * cell).item()
            frac = (((s[:, 0] - c[0]) * sx > 0) & ((s[:, 1] - c[1]) * sy > 0)).float().mean()
            se = math.sqrt(mass * (1 - mass) / 4000)
            assert abs(frac.item() - mass) < 5 * se + 1e-2, (sx, sy, frac, mass)


@pytest.mark.parametrize("name", sorted(VECTOR))
def test_distribution_under_plate(name):
    flow = VECTOR[name]()

    def model():
        with pyro.plate("data", 5):
            return pyro.sample("z", flow.distribution())

    tr = poutine.trace(model).get_trace()
    tr.compute_log_prob()
    assert tr.nodes["z"]["value"].shape == (5, 2)
    assert tr.nodes["z"]["log_prob"].shape == (5,)
    assert flow.distribution(batch_shape=(3, 4)).sample().shape == (3, 4, 2)


def test_temperature_scales_samples():
    flow = RealNVP((2,), num_layers=2, hidden_dims=(8,))  # identity at initialisation
    assert flow.sample(4000, temperature=0.5).std().item() == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("name", sorted(ALL_IMAGE))
def test_image_flows(name):
    flow = _perturbed(ALL_IMAGE[name]) if name != "cnf" else ALL_IMAGE[name]()
    shape = tuple(flow.event_shape)
    x = torch.rand(6, *shape)
    lp = flow.log_prob(x)
    assert lp.shape == (6,) and torch.isfinite(lp).all()
    bpd = flow.bits_per_dim(x)
    expected = (-lp.mean().item() / 16 + math.log(256)) / math.log(2)
    assert bpd.item() == pytest.approx(expected, rel=1e-5)
    s = flow.sample(3, temperature=0.7)
    assert s.shape == (3, *shape) and torch.isfinite(s).all()
    svi = SVI(flow.model, flow.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    assert math.isfinite(svi.step(x))
    with pytest.raises(ValueError, match="outside the support|is defined on"):
        flow.log_prob(x + 2.0)


@pytest.mark.parametrize("make", [VECTOR["realnvp"], VECTOR["maf"]])
def test_bad_input_gets_clear_errors(make):
    flow = make()
    with pytest.raises(ValueError, match="expects data of shape"):
        flow.log_prob(torch.randn(3, 5))
    with pytest.raises(ValueError, match="non-finite"):
        flow.model(torch.tensor([[float("nan"), 0.0]]))


@pytest.mark.parametrize("name", ["nice", "realnvp", "maf", "nsf", "resflow", "cnf"])
def test_an_int_event_shape_is_a_vector_shape_as_in_the_vae(name):
    """``RealNVP(2)`` raised "'int' object is not iterable" where ``VAE(20, ...)`` worked."""
    flow = build(name, 2, hidden_dims=(8,)) if name != "cnf" else build(name, 2)
    assert flow.event_shape == (2,)
    assert flow.log_prob(torch.randn(3, 2)).shape == (3,)


def test_state_dict_round_trip():
    a = _perturbed(IMAGE["glow"])
    torch.manual_seed(5)
    b = IMAGE["glow"]()
    b.load_state_dict(a.state_dict())
    x = torch.rand(4, 4, 4)
    torch.testing.assert_close(b.log_prob(x), a.log_prob(x))


def test_uniform_dequantized_image_model_elbo():
    torch.manual_seed(0)
    flow = RealNVP(
        (4, 4), num_layers=1, hidden_channels=4, num_blocks=1, dequantization="uniform", num_bins=17
    )
    x = torch.randint(0, 17, (8, 4, 4))
    svi = SVI(flow.model, flow.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    loss = svi.step(x)
    # the bound in nats vs. the continuous density on a dequantized copy: same scale
    y = (x + torch.rand(x.shape)) / 17
    expected = -(flow.log_prob(y) - 16 * math.log(17)).sum().item()
    assert loss == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_build(name):
    v = build(
        name, (2,), **({"method": "rk4", "options": {"step_size": 0.5}} if name == "cnf" else {})
    )
    assert isinstance(v, FLOWS[name]) and v.event_shape == (2,)
    img = build(name, (8, 8))
    assert img.event_shape == (8, 8)
    with pytest.raises(ValueError, match="unknown flow"):
        build("nope", (2,))


@pytest.mark.parametrize("name", sorted(ALL_IMAGE))
def test_image_log_prob_matches_autograd_change_of_variables(name):
    """The whole stack (multi-scale, squeeze, logit, reshape) against an autograd Jacobian."""
    from torch.distributions import ComposeTransform

    flow = _perturbed(ALL_IMAGE[name]).double()
    for t in flow.transforms:
        if hasattr(t, "rtol"):  # continuous flows: tight solver tolerances in float64
            t.rtol = t.atol = 1e-9
    inverse = ComposeTransform(flow.transforms).inv
    x = 0.1 + 0.8 * torch.rand(2, *flow.event_shape, dtype=torch.float64)
    base = torch.distributions.Normal(0.0, 1.0)
    for xi in x:
        z = inverse(xi.clone())
        jac = torch.autograd.functional.jacobian(lambda v: inverse(v).reshape(-1), xi)
        expected = base.log_prob(z).sum() + torch.linalg.slogdet(jac.reshape(16, 16))[1]
        torch.testing.assert_close(flow.log_prob(xi.clone()), expected, rtol=1e-6, atol=1e-6)


def test_nsf_coupling_and_bound_check():
    flow = NSF((3,), num_layers=3, hidden_dims=(8,), layer="coupling", bound=2.0)
    x = torch.randn(5, 3)
    normal = torch.distributions.Normal(0.0, 1.0)
    torch.testing.assert_close(flow.log_prob(x), normal.log_prob(x).sum(-1))  # identity at init
    data = torch.zeros(10, 3)
    data[:3, 0] = 2.5  # 3 of 30 coordinates (10%) outside [-2, 2]
    with pytest.raises(ValueError, match=r"10\.0% of the values of 'x'.*\[-2, 2\]"):
        flow.model(data)
    NSF((3,), num_layers=1, hidden_dims=(8,), bound=2.0, max_outside=0.1).model(data)
    with pytest.raises(ValueError, match="layer must be"):
        NSF((3,), layer="spline")


def test_nsf_defaults_are_the_measured_ones():
    """``build("nsf")`` (what ``pyro-gen train nsf`` runs): spline couplings, the measured
    choice (NSF's docstring): 32 bins on vectors, multi-scale with 8 bins on images."""
    from pyro_gen.transforms import Coupling, MaskedAutoregressive, RationalQuadratic

    def layers(flow, kind):
        return [m for m in flow.modules() if isinstance(m, kind)]

    vector = build("nsf", (2,))
    assert len(layers(vector, Coupling)) == 4 and not layers(vector, MaskedAutoregressive)
    assert {h.num_bins for h in layers(vector, RationalQuadratic)} == {32}
    image = build("nsf", (8, 8))
    # 2 levels: 2 checkerboard and 2 channel couplings, then 3 checkerboard ones
    assert len(layers(image, Coupling)) == 7 and not layers(image, MaskedAutoregressive)
    assert {h.num_bins for h in layers(image, RationalQuadratic)} == {8}
