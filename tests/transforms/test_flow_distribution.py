"""pyro_gen.distributions.Flow: shapes under plates, normalisation, conditioning, SVI."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_gen import transforms as T
from pyro_gen.distributions import Flow, FlowDistribution
from pyro_gen.distributions.flow import ConditionalNormal, LearnedMixture, LearnedNormal


def _perturb(module: torch.nn.Module, scale: float = 0.3) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _flow2d() -> Flow:
    return Flow(
        2,
        [
            T.affine_coupling(2, hidden_dims=[16]),
            T.masked_autoregressive(2, [16]),
            T.Permute(T.reverse_permutation(2)),
            T.additive_coupling(2, parity=1, hidden_dims=[16]),
        ],
    )


def test_shapes_under_plate_in_a_model() -> None:
    flow = _flow2d()
    x = torch.randn(7, 2)

    def model(x):
        pyro.module("flow", flow)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", flow(), obs=x)

    tr = poutine.trace(model).get_trace(x)
    tr.compute_log_prob()
    site = tr.nodes["x"]
    assert site["fn"].batch_shape == (7,) and site["fn"].event_shape == (2,)
    assert site["log_prob"].shape == (7,)
    torch.testing.assert_close(site["log_prob"], flow.log_prob(x))
    # nested plates: batch shape grows, event shape stays
    with pyro.plate("a", 3, dim=-2), pyro.plate("b", 4, dim=-1):
        z = pyro.sample("z", flow())
    assert z.shape == (3, 4, 2)


def test_density_integrates_to_one() -> None:
    torch.manual_seed(1)
    flow = _flow2d().double()
    _perturb(flow)
    g = torch.linspace(-25, 25, 601, dtype=torch.float64)  # the perturbed flow has wide tails
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx, yy], -1).reshape(-1, 2)
    with torch.no_grad():
        mass = flow.log_prob(pts).exp().sum() * (g[1] - g[0]) ** 2
    assert abs(mass.item() - 1.0) < 1e-2


def test_samples_match_log_prob() -> None:
    # E_q[log q] estimated by sampling equals minus the entropy computed by quadrature
    torch.manual_seed(2)
    flow = _flow2d().double()
    _perturb(flow)
    with torch.no_grad():
        x = flow.sample(20000)
        mc = flow.log_prob(x).mean()
        g = torch.linspace(-9, 9, 301, dtype=torch.float64)
        xx, yy = torch.meshgrid(g, g, indexing="ij")
        lp = flow.log_prob(torch.stack([xx, yy], -1).reshape(-1, 2))
        quad = (lp.exp() * lp).sum() * (g[1] - g[0]) ** 2
    assert abs(mc.item() - quad.item()) < 0.05


def test_image_flow_with_multiscale_and_temperature() -> None:
    def level(shape, last):
        return [
            T.ActNorm(shape),
            T.InvertibleConv1x1(shape),
            T.affine_coupling(shape, mask="channel", hidden_channels=8, num_blocks=1),
        ]

    flow = Flow((1, 4, 4), [T.multi_scale((1, 4, 4), level, num_levels=2)])
    assert flow.base_shape == (16,)
    x = torch.rand(5, 1, 4, 4)
    lp = flow.log_prob(x)  # first call initialises ActNorm on the data
    assert lp.shape == (5,) and torch.isfinite(lp).all()
    s_cold = flow.sample(4000, temperature=0.1)
    s_warm = flow.sample(4000)
    assert s_warm.shape == (4000, 1, 4, 4)
    assert s_cold.std(0).mean() < 0.2 * s_warm.std(0).mean()


def test_conditional_flow_batch_shape_and_context_use() -> None:
    flow = Flow(
        3,
        [
            T.conditional_affine_coupling(3, 2, hidden_dims=[8]),
            T.conditional_masked_autoregressive(3, 2, [8]),
        ],
    )
    _perturb(flow)
    ctx = torch.randn(6, 2)
    d = flow(ctx)
    assert isinstance(d, FlowDistribution) and d.batch_shape == (6,)
    x = torch.randn(6, 3)
    lp = flow.log_prob(x, ctx)
    assert lp.shape == (6,)
    assert not torch.allclose(lp, flow.log_prob(x, ctx + 1.0))
    assert flow.sample(5, ctx).shape == (5, 6, 3)
    with pytest.raises(ValueError, match="context"):
        flow()


def test_svi_maximum_likelihood_decreases_loss() -> None:
    torch.manual_seed(0)
    data = torch.randn(256, 2) @ torch.tensor([[2.0, 0.0], [1.5, 0.3]]) + 1.0
    flow = _flow2d()

    def model(x):
        pyro.module("flow", flow)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", flow(), obs=x)

    def guide(x):
        pass

    svi = SVI(model, guide, Adam({"lr": 2e-2}), Trace_ELBO())
    losses = [svi.step(data) / len(data) for _ in range(80)]
    assert losses[-1] < losses[0] - 0.5
    # close to the true Gaussian's negative log-likelihood
    cov = torch.tensor([[2.0, 0.0], [1.5, 0.3]])
    true = dist.MultivariateNormal(torch.ones(2), cov.T @ cov)
    assert losses[-1] < -true.log_prob(data).mean().item() + 0.2


def test_flow_module_moves_base_buffers() -> None:
    flow = _flow2d().double()
    assert flow.base_loc.dtype == torch.float64
    names = {n for n, _ in flow.named_buffers()}
    assert {"base_loc", "base_scale"} <= names


def test_inverse_and_composed_transforms_keep_their_parameters_registered() -> None:
    from torch.distributions import ComposeTransform

    a, b, c = (T.affine_coupling(2, hidden_dims=[4]) for _ in range(3))
    flow = Flow(2, [a.inv, ComposeTransform([b, c])])
    n = sum(p.numel() for m in (a, b, c) for p in m.parameters())
    assert sum(p.numel() for p in flow.parameters()) == n


# ------------------------------------------------------------ learnable base distributions


def test_learned_bases_have_their_closed_form_densities() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 2)
    normal, mixture = LearnedNormal(2), LearnedMixture(2, num_components=3)
    with torch.no_grad():
        for p in [*normal.parameters(), *mixture.parameters()]:
            p.add_(0.5 * torch.randn_like(p))
    # with no transforms the flow's density is the base's, checked against closed forms
    lp = Flow(2, [], base=normal).log_prob(x)
    sd = normal.log_scale.exp()
    expected = torch.distributions.Normal(normal.loc, sd).log_prob(x).sum(-1)
    torch.testing.assert_close(lp, expected)
    lp = Flow(2, [], base=mixture).log_prob(x)
    comp = torch.distributions.Normal(mixture.loc, mixture.log_scale.exp())
    per = comp.log_prob(x[:, None, :]).sum(-1) + mixture.logits.log_softmax(-1)
    torch.testing.assert_close(lp, per.logsumexp(-1))


def test_learned_base_trains_and_temperature_scales_it() -> None:
    flow = Flow(2, [T.affine_coupling(2, hidden_dims=[8])], base=LearnedNormal(2))
    loss = -flow.log_prob(torch.randn(16, 2) + 3.0).mean()
    loss.backward()
    assert flow.base.loc.grad is not None and flow.base.loc.grad.abs().sum() > 0
    # identity transform at init: samples are the base's, temperature scales its std
    torch.manual_seed(1)
    assert flow.sample(4000, temperature=0.5).std().item() == pytest.approx(0.5, rel=0.05)


def test_conditional_base() -> None:
    flow = Flow(2, [T.affine_coupling(2, hidden_dims=[8])], base=ConditionalNormal(2, 3, (8,)))
    assert flow.conditional
    assert flow.log_prob(torch.randn(5, 2), torch.randn(5, 3)).shape == (5,)
    with pytest.raises(ValueError, match="pass a context"):
        flow.log_prob(torch.randn(5, 2))


def test_base_event_shape_must_match() -> None:
    with pytest.raises(ValueError, match=r"event shape \(3,\) but the flow's base .* \(2,\)"):
        Flow(2, [T.affine_coupling(2, hidden_dims=[8])], base=LearnedNormal(3))


def test_transforms_must_reach_the_event_shape() -> None:
    # Flow(4, [a coupling on 3 features]) inferred a (3,) base and drew (3,) samples: the
    # event shape given was silently ignored
    with pytest.raises(ValueError, match=r"to \(3,\), not to the flow's event_shape \(4,\)"):
        Flow(4, [T.affine_coupling(3, hidden_dims=[8])])
    with pytest.raises(ValueError, match="event_shape"):
        Flow((2, 4, 4), [T.Unsqueeze((4, 2, 2))])
    assert Flow((1, 4, 4), [T.Unsqueeze((4, 2, 2))]).base_shape == (4, 2, 2)
