"""UNet, ResNetConv and TimeMLP as a user's model would call them: odd sizes, one or many
channels, a batch of one, particles as an extra leading batch dim, one time for the batch,
float64, tracing, train/eval mode and seeded determinism."""

from __future__ import annotations

import pytest
import torch

from pyro_gen.nn import ResNetConv, TimeMLP, UNet


@pytest.mark.parametrize(
    "channels, size, mults", [(1, (6, 10), (1, 2)), (3, (7, 5), (1,)), (2, (12, 4), (1, 2, 2))]
)
def test_unet_takes_particles_as_a_leading_batch_dim(channels, size, mults) -> None:
    # x of shape (K, B, C, H, W) was refused ("UNet expects (B, C, H, W)")
    torch.manual_seed(0)
    net = UNet(channels, 8, mults, attention_levels=(-1,)).eval()
    x, t = torch.randn(3, 2, channels, *size), torch.randint(0, 100, (3, 2))
    out = net(x, t)
    assert out.shape == x.shape
    flat = net(x.reshape(6, channels, *size), t.reshape(6))
    assert torch.allclose(out.reshape(flat.shape), flat, atol=1e-5)
    # a batch of one gives what the same example gives inside a batch (no batch statistics)
    assert torch.allclose(net(x[1, :1], t[1, :1]), out[1, :1], atol=1e-5)


def test_unet_takes_one_time_for_the_whole_batch() -> None:
    # a sampler's step passes one t: a 0-d tensor raised IndexError inside the embedding
    net = UNet(1, 8, (1, 2)).eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(net(x, torch.tensor(7)), net(x, torch.full((4,), 7)), atol=1e-6)
    with pytest.raises(ValueError, match=r"times t .*batch shape \(4,\).*got shape \(3,\)"):
        net(x, torch.tensor([1, 2, 3]))


def test_unet_labels_with_particles() -> None:
    net = UNet(1, 8, (1, 2), num_classes=3).eval()
    x, t, y = torch.randn(2, 3, 1, 4, 4), torch.tensor(5), torch.tensor([[0, 1, 2], [2, 1, 0]])
    out = net(x, t, y)
    assert torch.allclose(out[1], net(x[1], torch.full((3,), 5), y[1]), atol=1e-5)


def test_unet_in_float64_traced_and_in_both_modes() -> None:
    torch.manual_seed(0)
    net = UNet(2, 8, (1, 2), dropout=0.5).double()
    x, t = torch.randn(3, 2, 4, 6, dtype=torch.float64), torch.tensor([1, 50, 99])
    assert net(x, t).dtype == torch.float64
    net.train()  # dropout draws
    assert not torch.equal(net(x, t), net(x, t))
    net.eval()
    assert torch.equal(net(x, t), net(x, t))
    with pytest.warns(torch.jit.TracerWarning):  # the size checks are Python branches
        traced = torch.jit.trace(net, (x, t))
    assert torch.allclose(traced(2 * x, t + 1), net(2 * x, t + 1))


def test_networks_built_and_run_under_one_seed_are_the_same() -> None:
    def run() -> torch.Tensor:
        torch.manual_seed(3)
        unet = UNet(1, 8, (1, 2), dropout=0.1)
        res = ResNetConv(1, 4, 2, zero_init_output=False)
        x = torch.randn(2, 1, 4, 4)
        return torch.cat([unet(x, torch.tensor([1, 2])), res(x)], 1)

    assert torch.equal(run(), run())


def test_resnet_and_time_mlp_take_particles_and_float64() -> None:
    res = ResNetConv(3, 8, 2, zero_init_output=False).double()
    x = torch.randn(4, 2, 3, 5, 7, dtype=torch.float64)
    assert torch.allclose(res(x).reshape(8, 2, 5, 7), res(x.reshape(8, 3, 5, 7)))
    mlp = TimeMLP(2, 16).double()
    v, t = torch.randn(4, 3, 2, dtype=torch.float64), torch.randint(0, 9, (4, 3))
    assert torch.allclose(mlp(v, t)[2], mlp(v[2], t[2]))
