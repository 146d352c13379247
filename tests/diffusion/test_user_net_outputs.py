"""A user's network whose output does not fit the model gets one error naming it.

Before, a DDPM with ``variance="learned_range"`` (the default of ``build_ddpm``) whose network
returned only the data's channels, or a network of the wrong width in a DDPM or ScoreModel,
failed in a reshape with torch's "shape '[1, 8, 2]' is invalid for input of size 8". Checked:
the error names the network's shape and the expected one (and, for learned variances, the
extra channels); networks of the right shape, with learned variances too, still train and
sample (the learned variance against its range [posterior variance, beta_t] by hand). Data of
an event of 2 dims that are not images (read as images by ``data="auto"``) get an error naming
``data="continuous"``, which then trains.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from torch import nn

from pyro_gen.diffusion import DDPM, VPSDE, ScoreModel


class Width(nn.Module):
    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.f = nn.Linear(dim + 1, out)

    def forward(self, x, t):
        return self.f(torch.cat([x, t.to(x)[:, None]], -1))


class ConvWidth(nn.Module):
    def __init__(self, out: int) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, out, 3, padding=1)

    def forward(self, x, t):
        return self.c(x)


def _loss(m, x):
    return pyro.infer.Trace_ELBO().loss(m.model, m.guide, x)


@pytest.mark.parametrize(
    "make, x, match",
    [
        (lambda: DDPM(Width(2, 2), (2,), timesteps=5, variance="learned_range"),
         torch.randn(8, 2), r"shape \(8, 2\) .* expected \(8, 4\): variance='learned_range'"),
        (lambda: DDPM(ConvWidth(1), (1, 4, 4), timesteps=5, variance="learned_range"),
         torch.rand(3, 1, 4, 4), r"shape \(3, 1, 4, 4\) .* expected \(3, 2, 4, 4\)"),
        (lambda: DDPM(Width(2, 3), (2,), timesteps=5),
         torch.randn(8, 2), r"DDPM's network returned shape \(8, 3\) .* expected \(8, 2\)"),
        (lambda: ScoreModel(Width(2, 1), VPSDE(), (2,)),
         torch.randn(8, 2), r"score model.s network returned shape \(8, 1\) for x of shape"),
    ],
)  # fmt: skip
def test_a_network_of_the_wrong_width_is_named(make, x, match):
    with pytest.raises(ValueError, match=match):
        _loss(make(), x)


def test_networks_of_the_right_width_train_and_sample():
    x = torch.randn(8, 2)
    m = DDPM(Width(2, 4), (2,), timesteps=5, variance="learned_range")
    assert torch.isfinite(torch.tensor(_loss(m, x)))
    p = m.p_mean_logvar(x, 3)
    s = m.schedule
    low, high = s.posterior_log_variance_clipped[2], s.betas[2].log()
    assert bool(((p["log_var"] >= low - 1e-6) & (p["log_var"] <= high + 1e-6)).all())
    assert m.sample(3).shape == (3, 2)
    img = DDPM(ConvWidth(2), (1, 4, 4), timesteps=5, variance="learned_range")
    assert torch.isfinite(torch.tensor(_loss(img, torch.rand(3, 1, 4, 4))))
    sm = ScoreModel(Width(2, 2), VPSDE(), (2,))
    assert torch.isfinite(torch.tensor(_loss(sm, x)))


class TimeScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, t):
        return self.w * x * t.to(x).reshape((-1,) + (1,) * (x.dim() - 1)) / 5


def test_matrix_data_read_as_an_image_names_data_continuous():
    # data="auto" reads an event of 2 or 3 dims as an image; a user's (L, D) sequences met
    # "image data must lie in [0, 1]" alone, not the option that fits them
    net = TimeScale()
    x = torch.randn(4, 5, 3)
    with pytest.raises(ValueError, match=r"event shape \(5, 3\) that are not images.*continuous"):
        _loss(DDPM(net, (5, 3), timesteps=5), x)
    assert torch.isfinite(torch.tensor(_loss(DDPM(net, (5, 3), timesteps=5, data="continuous"), x)))
