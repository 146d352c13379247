"""Conditional diffusion: keyword arguments of ``model`` (``y=labels``) and ``context=`` of the
samplers and likelihoods reach a user's network as ``net(x, t, y=...)``.

Checked against closed forms: the data are two classes, :math:`x \\mid y \\sim \\mathcal
N(\\mu_y, I)`, for which the exact conditional noise prediction (DDPM), score (VP-SDE) and
marginal velocity (rectified flow) are known; oracle networks use the label they are given, so
samples land at :math:`\\mu_y`, the probability-flow / flow log-densities equal
:math:`\\log \\mathcal N(x; \\mu_y, I)` and the bounds lie near its negative only when each
example's label reaches it in its own row (through time plates, sample and bound chunks and
ODE solves). ``fit`` trains each model on a dict
``{"x": x, "y": y}`` as the VAE and GAN families take labels.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from torch import nn

from pyro_gen.diffusion import (
    DDPM,
    VPSDE,
    FlowMatching,
    ScoreModel,
    likelihood_bound,
    probability_flow_bits_per_dim,
    probability_flow_log_prob,
    sampled_variational_bound,
    variational_bound,
)
from pyro_gen.infer import fit
from pyro_gen.transforms.continuous import ContinuousFlow

MU = torch.tensor([[3.0, -2.0], [-3.0, 1.0]], dtype=torch.float64)


def _labels(n: int) -> torch.Tensor:
    # sorted, so a label that lands in another example's row moves a whole block of samples
    return (torch.arange(n) >= n // 2).long()


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = _labels(n)
    return MU[y] + torch.randn(n, 2, dtype=torch.float64), y


def _exact(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Normal(MU[y], 1.0).log_prob(x).sum(-1)


class OracleEps(nn.Module):
    """:math:`E[\\epsilon \\mid x_t, y] = \\sqrt{1 - \\bar\\alpha_t}(x_t - \\sqrt{\\bar\\alpha_t}
    \\mu_y)` for unit-variance classes (the DDPM's steps ``t``, 1-based)."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("ab", alphas_cumprod)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y):
        ab = self.ab[t.long() - 1][:, None]
        return (1 - ab).sqrt() * (x - ab.sqrt() * MU[y].to(x)) + 0 * self.dummy


class OracleScore(nn.Module):
    """VP-SDE (:math:`\\alpha^2 + \\sigma^2 = 1`): :math:`s(x, t \\mid y) = -(x - \\alpha(t)
    \\mu_y)`."""

    def __init__(self, sde: VPSDE) -> None:
        super().__init__()
        self.sde = sde
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y):
        alpha = self.sde.marginal(t)[0][:, None].to(x)
        return -(x - alpha * MU[y].to(x)) + 0 * self.dummy


class OracleVelocity(nn.Module):
    """Rectified flow (:math:`x_s = (1-s)x + sz`, :math:`u = z - x`):
    :math:`E[u \\mid x_s, y] = -\\mu_y + \\frac{2s - 1}{(1-s)^2 + s^2}(x_s - (1-s)\\mu_y)`; ``t``
    one per example (training) or one for the batch (the ODE)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y):
        s = t.to(x).expand(x.shape[:1])[:, None]
        mu = MU[y].to(x)
        return -mu + (2 * s - 1) / ((1 - s) ** 2 + s**2) * (x - (1 - s) * mu) + 0 * self.dummy


def _class_means(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([x[y == k].mean(0) for k in (0, 1)]).to(MU)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_ddpm_samples_each_label_at_its_class_mean(sampler):
    torch.manual_seed(0)
    m = DDPM(nn.Identity(), (2,), "linear", timesteps=200).double()
    m.net = OracleEps(m.schedule.alphas_cumprod)
    y = _labels(2000)
    # in chunks: each chunk's labels must be its own rows
    x = m.sample(2000, sampler, steps=50 if sampler == "ddim" else None, batch_size=700,
                 context={"y": y})  # fmt: skip
    assert (_class_means(x, y) - MU).abs().max() < 0.15
    spread = (1 + ((MU[0] - MU[1]) / 2) ** 2).sqrt()  # the two-class mixture's std
    assert (x.std(0) - spread).abs().max() < 0.15


def test_score_model_density_and_samples_given_labels_are_the_class_gaussians():
    torch.manual_seed(0)
    sde = VPSDE()
    sm = ScoreModel(OracleScore(sde), sde, (2,), param="score").double()
    x, y = _data(6)
    lp = probability_flow_log_prob(sm, x, context={"y": y}, eps=1e-4)
    # with unit variance at every t the flow is the shift from alpha(eps) mu_y to alpha(1)
    # mu_y (not quite 0, the prior's mean): log N(x - shift; 0, I), log|det| = 0
    alpha = sde.marginal(torch.tensor([1e-4, 1.0], dtype=x.dtype))[0]
    shifted = x - (alpha[0] - alpha[1]) * MU[y]
    assert torch.allclose(lp, torch.distributions.Normal(0, 1).log_prob(shifted).sum(-1), atol=1e-4)
    assert not torch.allclose(lp, _exact(x, 1 - y), atol=1.0)
    assert torch.allclose(sm.log_prob(x, context={"y": y}, eps=1e-4), lp)
    y = _labels(1000)
    draws = sm.sample(1000, "euler_maruyama", steps=300, context={"y": y})
    assert (_class_means(draws, y) - MU).abs().max() < 0.15


def test_score_model_objective_uses_each_examples_label():
    sde = VPSDE()
    sm = ScoreModel(OracleScore(sde), sde, (2,), param="score", time_samples=3).double()
    x, y = _data(256)
    elbo = pyro.infer.Trace_ELBO()
    pyro.set_rng_seed(0)
    right = elbo.loss(sm.model, sm.guide, x, y=y)
    pyro.set_rng_seed(0)
    wrong = elbo.loss(sm.model, sm.guide, x, y=1 - y)
    # the exact score's loss is the irreducible part; the other class's score is 6 units off
    assert wrong > 5 * right


def test_flow_matching_density_and_samples_given_labels_are_the_class_gaussians():
    torch.manual_seed(0)
    flow = ContinuousFlow(OracleVelocity(), (2,), rtol=1e-7, atol=1e-7).double()
    fm = FlowMatching(flow, objective="rectified")
    x, y = _data(6)
    assert torch.allclose(fm.log_prob(x, context={"y": y}), _exact(x, y), atol=1e-4)
    y = _labels(1000)
    assert (_class_means(fm.sample(1000, context={"y": y}), y) - MU).abs().max() < 0.15
    pyro.set_rng_seed(0)
    xs, ys = _data(256)
    right = pyro.infer.Trace_ELBO().loss(fm.model, fm.guide, xs, y=ys)
    pyro.set_rng_seed(0)
    wrong = pyro.infer.Trace_ELBO().loss(fm.model, fm.guide, xs, y=1 - ys)
    assert wrong > 5 * right


class LabelNet(nn.Module):
    """A user's conditional network: an MLP on (x, t, one-hot y)."""

    def __init__(self, out: int = 2) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(5, 32), nn.SiLU(), nn.Linear(32, out))
        self.labels_seen = 0

    def forward(self, x, t, y):
        self.labels_seen += 1
        t = t.to(x).expand(x.shape[:1])[:, None]
        return self.f(torch.cat([x, t, nn.functional.one_hot(y, 2).to(x)], -1))


def _builders():
    return {
        "ddpm": lambda net: DDPM(net, (2,), timesteps=20),
        "score": lambda net: ScoreModel(net, VPSDE(), (2,)),
        "flow_matching": lambda net: FlowMatching(ContinuousFlow(net, (2,), rtol=1e-3, atol=1e-3)),
    }


@pytest.mark.parametrize("name", ["ddpm", "score", "flow_matching"])
def test_fit_trains_on_labelled_data_and_samples_per_label(name):
    pyro.clear_param_store()
    torch.manual_seed(0)
    net = LabelNet()
    m = _builders()[name](net)
    x, y = _data(64)
    before = [p.detach().clone() for p in net.parameters()]
    fit(m, {"x": x.float(), "y": y}, steps=3, batch_size=32, progress=False)
    assert net.labels_seen > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert m.sample(4, context={"y": _labels(4)}).shape == (4, 2)


@pytest.mark.parametrize("name", ["ddpm", "score", "flow_matching"])
def test_a_label_per_sample_is_required(name):
    m = _builders()[name](LabelNet())
    with pytest.raises(ValueError, match=r"y= must hold one row per example \(4"):
        m.sample(4, context={"y": _labels(3)})
    with pytest.raises(ValueError, match=r"y= must hold one row per example \(5"):
        m.model(torch.randn(5, 2), y=_labels(3))


def test_bounds_given_labels_are_near_the_class_nll_and_far_with_the_other_labels():
    """The DDPM bound (every term, in chunks; and its stratified estimate) and the score
    model's continuous-time bound with each example's label: near the exact -log N(x; mu_y, I)
    (the DDPM's fixed reverse variances leave it about 1.6 nats loose); with the other class's
    label, over 20 nats above it."""
    torch.manual_seed(0)
    m = DDPM(nn.Identity(), (2,), "linear", timesteps=200).double()
    m.net = OracleEps(m.schedule.alphas_cumprod)
    sde = VPSDE()
    sm = ScoreModel(OracleScore(sde), sde, (2,), param="score").double()
    x, y = _data(40)
    nll = -_exact(x, y)
    bounds = {
        "ddpm": lambda y: variational_bound(m, x, batch_size=7, context={"y": y})["total"],
        "sampled": lambda y: sampled_variational_bound(m, x, batch_size=7, context={"y": y})[
            "total"
        ],
        "score": lambda y: likelihood_bound(sm, x, time_samples=64, context={"y": y})["total"],
    }
    for name, bound in bounds.items():
        gap = float((bound(y) - nll).mean())
        assert -1.0 < gap < 3.5, name
        assert float((bound(1 - y) - nll).mean()) > 20, name


class ImageLabelNet(nn.Module):
    """``net(x, t, y)``; with ``fixed`` labels set, ``net(x, t)`` reads them from itself: the
    unconditional twin whose scores the conditional calls must reproduce."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.e, self.fixed = nn.Conv2d(1, 1, 3, padding=1), nn.Embedding(2, 1), None

    def forward(self, x, t, y=None):
        y = self.fixed if y is None else y
        return self.c(x) * t.to(x)[:, None, None, None] / 10 + self.e(y)[:, :, None, None]


@pytest.mark.parametrize("endpoint", ["dequantize", "decoder"])
def test_image_bits_per_dim_with_labels_equal_those_of_a_net_holding_them(endpoint):
    torch.manual_seed(0)
    m = DDPM(ImageLabelNet(), (1, 4, 4), timesteps=10)
    x, y = torch.randint(0, 256, (3, 1, 4, 4)) / 255.0, torch.tensor([0, 1, 1])

    def bpd(**context):
        g = torch.Generator().manual_seed(1)
        return probability_flow_bits_per_dim(
            m, x, endpoint=endpoint, generator=g, rtol=1e-4, atol=1e-4, **context
        )

    conditional = bpd(context={"y": y})
    m.net.fixed = y
    torch.testing.assert_close(conditional, bpd())
    m.net.fixed = 1 - y
    assert not torch.allclose(conditional, bpd())
