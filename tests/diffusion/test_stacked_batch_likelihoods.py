"""The DDPM's likelihood helpers on stacked batches ``(K, B, *event_shape)``, which the score
model and the network take: the bound (:func:`variational_bound`, its sampled estimate,
``DDPM.bits_per_dim``, :func:`prior_kl`), the continuous-time bound and the probability-flow
likelihoods refused them ("expected data of shape (batch, 2), got (3, 4, 2)"; the image
helpers: "shape '[3, 1, 4, 4]' is invalid"; ``FlowMatching.log_prob``: an error about the
training program's time plate). Each now returns the per-slice loop's results
with the batch dims kept: every draw is made in the order the loop makes it (one chunk of
``batch_size`` rows per slice; one generator), so the two agree to the last bit, or, where the
draws are laid out over the whole batch at once (:func:`likelihood_bound`), the flat batch's.

Float64 throughout, so that the comparisons are exact up to rounding, not the network's
batch-size-dependent float32 kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_gen.diffusion import (
    DDPM,
    FlowMatching,
    likelihood_bound,
    prior_kl,
    probability_flow_bits_per_dim,
    probability_flow_decoder_bound,
    probability_flow_log_prob,
    sampled_variational_bound,
    variational_bound,
)
from pyro_gen.transforms.continuous import ContinuousFlow

K, B, T, LEVELS = 3, 4, 10, 4


class LabelNet(nn.Module):
    """A user's conditional network ``net(x, t, y)`` on vectors of size 2."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.label = nn.Embedding(2, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype).expand(x.shape[:1])[:, None] / T
        return torch.tanh(self.lin(torch.cat([x, t], -1))) + self.label(y)


class ConvNet(nn.Module):
    """A user's image network ``net(x, t)`` on ``(B, 1, H, W)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype).expand(x.shape[:1]).reshape(-1, 1, 1, 1) / T
        return torch.tanh(self.conv(torch.cat([x, t.expand_as(x)], 1)))


def _vectors():
    torch.manual_seed(0)
    m = DDPM(LabelNet(), (2,), "linear", timesteps=T, variance="fixed_small").double()
    x = torch.randn(K, B, 2, dtype=torch.float64)
    return m, x, {"y": torch.tensor([0, 1, 1, 0])}


def _images():
    torch.manual_seed(0)
    m = DDPM(ConvNet(), (4, 4), "linear", timesteps=T, data="image", num_bins=LEVELS).double()
    x = torch.randint(0, LEVELS, (K, B, 4, 4)).double() / (LEVELS - 1)
    return m, x, {}


def _same(stacked: dict, slices: list[dict], keys) -> None:
    for key in keys:
        torch.testing.assert_close(stacked[key], torch.stack([s[key] for s in slices]))


@pytest.mark.parametrize("data", [_vectors, _images])
def test_the_bound_of_stacked_batches_is_the_per_slice_loop(data):
    m, x, context = data()
    torch.manual_seed(1)
    stacked = variational_bound(m, x, batch_size=B, context=context)
    torch.manual_seed(1)
    slices = [variational_bound(m, x[k], batch_size=B, context=context) for k in range(K)]
    assert stacked["terms"].shape == (K, B, T)
    _same(stacked, slices, ("prior", "terms", "total", "bits_per_dim"))
    # the bound's own prior term, in closed form per example
    torch.testing.assert_close(prior_kl(m, m.to_model_space(x, outer=True)), stacked["prior"])


@pytest.mark.parametrize("data", [_vectors, _images])
def test_the_sampled_bound_and_bits_per_dim_of_stacked_batches(data):
    m, x, context = data()
    stacked = sampled_variational_bound(
        m, x, strata=3, batch_size=B, generator=torch.Generator().manual_seed(2), context=context
    )
    g = torch.Generator().manual_seed(2)
    slices = [
        sampled_variational_bound(m, x[k], strata=3, batch_size=B, generator=g, context=context)
        for k in range(K)
    ]
    _same(stacked, slices, ("prior", "exact", "sampled", "total", "bits_per_dim"))
    torch.manual_seed(3)
    bpd = m.bits_per_dim(x, batch_size=B, context=context)
    torch.manual_seed(3)
    loop = [m.bits_per_dim(x[k], batch_size=B, context=context) for k in range(K)]
    assert bpd == pytest.approx(sum(loop) / K, rel=1e-12)


def test_one_kl_term_per_example_of_a_stacked_batch():
    m, x, context = _vectors()
    t, noise = torch.randint(2, T + 1, (K, B)), torch.randn(K, B, 2, dtype=torch.float64)
    kl = m.kl_term(x, t, noise, **context)
    loop = [m.kl_term(x[k], t[k], noise[k], **context) for k in range(K)]
    torch.testing.assert_close(kl, torch.stack(loop))


FIXED_STEPS = {"method": "rk4", "options": {"step_size": 0.25}}


@pytest.mark.parametrize("data", [_vectors, _images])
def test_probability_flow_likelihoods_of_stacked_batches_are_the_per_slice_loop(data):
    m, x, context = data()
    if m.data == "continuous":
        lp = probability_flow_log_prob(m, x, context=context, **FIXED_STEPS)
        loop = [
            probability_flow_log_prob(m, x[k], context=context, **FIXED_STEPS) for k in range(K)
        ]
        torch.testing.assert_close(lp, torch.stack(loop))
        return
    bpd = probability_flow_bits_per_dim(
        m, x, num_bins=LEVELS, generator=torch.Generator().manual_seed(4), **FIXED_STEPS
    )
    g = torch.Generator().manual_seed(4)
    loop = [
        probability_flow_bits_per_dim(m, x[k], num_bins=LEVELS, generator=g, **FIXED_STEPS)
        for k in range(K)
    ]
    torch.testing.assert_close(bpd, torch.stack(loop))
    out = probability_flow_decoder_bound(
        m, x, num_bins=LEVELS, generator=torch.Generator().manual_seed(5), **FIXED_STEPS
    )
    g = torch.Generator().manual_seed(5)
    slices = [
        probability_flow_decoder_bound(m, x[k], num_bins=LEVELS, generator=g, **FIXED_STEPS)
        for k in range(K)
    ]
    _same(out, slices, ("ode", "decoder", "entropy", "total", "bits_per_dim"))


def test_the_continuous_time_bound_of_stacked_batches():
    m, x, context = _vectors()
    stacked = likelihood_bound(
        m, x, time_samples=4, generator=torch.Generator().manual_seed(6), context=context
    )
    # its draws span the whole batch at once: the flat batch's, with labels per row
    flat = likelihood_bound(
        m, x.reshape(-1, 2), time_samples=4, generator=torch.Generator().manual_seed(6),
        context={"y": context["y"].repeat(K)},
    )  # fmt: skip
    for key, value in flat.items():
        torch.testing.assert_close(stacked[key], value.reshape(K, B))
    # the exact terms, example by example, are the per-slice loop's
    loop = [likelihood_bound(m, x[k], time_samples=4, context=context) for k in range(K)]
    _same(stacked, loop, ("prior", "reconstruction"))


def test_flow_matchings_log_prob_of_stacked_batches_is_the_per_slice_loop():
    # LabelNet takes one flat batch (B, 2), as a user's velocity network does
    torch.manual_seed(0)
    fm = FlowMatching(ContinuousFlow(LabelNet(), (2,), **FIXED_STEPS)).double()
    _, x, context = _vectors()
    lp = fm.log_prob(x, context=context)
    loop = [fm.log_prob(x[k], context=context) for k in range(K)]
    torch.testing.assert_close(lp, torch.stack(loop))
