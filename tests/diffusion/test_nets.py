"""Networks: shapes, time dependence, gradients, EMA."""

from __future__ import annotations

import pytest
import torch

from pyro_gen.diffusion import EMA
from pyro_gen.nn.time_embedding import SinusoidalTimeEmbedding, TimeMLP
from pyro_gen.nn.unet import UNet

torch.set_num_threads(1)


def test_unet_28x28_shapes_and_gradients():
    net = UNet(1, base_channels=8, channel_mults=(1, 2, 2), out_channels=2)
    x = torch.randn(2, 1, 28, 28)
    out = net(x, torch.tensor([1, 500]))
    assert out.shape == (2, 2, 28, 28)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert any(type(m).__name__ == "Attention" for m in net.down_attn.modules())
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 30, 30), torch.tensor([1]))


def test_time_conditioning_changes_output():
    net = TimeMLP(2, 16)
    x = torch.randn(4, 2)
    assert not torch.allclose(net(x, torch.full((4,), 1)), net(x, torch.full((4,), 50)))
    emb = SinusoidalTimeEmbedding(6)(torch.tensor([0]))
    assert torch.allclose(emb, torch.tensor([[0.0, 0, 0, 1, 1, 1]]))


def test_ema_tracks_average():
    net = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema.load_state_dict({**ema.state_dict(), "avg__weight": torch.ones(1, 1)})
    ema.num_updates.fill_(100)
    ema.update()
    assert torch.allclose(ema.avg__weight, torch.full((1, 1), 0.5))
    with pytest.raises(ValueError):
        EMA(net, decay=1.0)
