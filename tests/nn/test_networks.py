"""MLP, MADE and ResNetConv: shapes, context handling, zero init and MADE's masks."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from pyro_gen.nn import MADE, MLP, ResNetConv


def test_mlp_shapes_and_context_broadcast() -> None:
    net = MLP(3, [8, 8], 5, context_dim=2)
    assert net(torch.randn(4, 3), torch.randn(4, 2)).shape == (4, 5)
    # one context for the whole batch, and a batch of contexts for one input
    assert net(torch.randn(6, 4, 3), torch.randn(2)).shape == (6, 4, 5)
    assert net(torch.randn(3), torch.randn(7, 2)).shape == (7, 5)
    with pytest.raises(ValueError, match="context"):
        net(torch.randn(4, 3))
    with pytest.raises(ValueError, match="last dim 3"):
        net(torch.randn(4, 2), torch.randn(2))


def test_mlp_zero_init_output_is_zero() -> None:
    net = MLP(3, [8], 4, zero_init_output=True)
    assert torch.equal(net(torch.randn(5, 3)), torch.zeros(5, 4))


@pytest.mark.parametrize("order", [None, [2, 0, 3, 1]])
def test_made_is_autoregressive(order) -> None:
    d, p = 4, 2
    made = MADE(d, [12, 12], p, order=order, context_dim=2, zero_init_output=False).double()
    with torch.no_grad():
        for q in made.parameters():
            q.add_(0.1 * torch.randn_like(q))
    ctx = torch.randn(2, dtype=torch.float64)
    x = torch.randn(d, dtype=torch.float64)
    J = jacobian(lambda v: made(v, ctx), x).reshape(p, d, d)  # (param, output i, input j)
    perm = torch.arange(d) if order is None else torch.tensor(order)
    rank = torch.empty(d, dtype=torch.long)
    rank[perm] = torch.arange(d)
    allowed = rank[None, :] < rank[:, None]  # output i may depend on input j
    assert torch.all(J[:, ~allowed] == 0)
    # and it does use the allowed inputs (the masks are not all zero)
    assert torch.all(J[:, allowed].abs().sum(0) > 0)
    # the context reaches every output, including the first in the order
    Jc = jacobian(lambda c: made(x, c), ctx)
    assert torch.all(Jc.abs().sum(-1) > 0)


def test_made_masks_are_buffers() -> None:
    made = MADE(3, [8], 2)
    names = {n for n, _ in made.named_buffers()}
    assert "order" in names and any(n.endswith("mask") for n in names)


def test_made_rejects_bad_order() -> None:
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, [8], order=torch.tensor([0, 0, 1]))


def test_resnet_shapes_context_and_zero_init() -> None:
    net = ResNetConv(2, 8, 6, num_blocks=2, context_dim=3)
    x = torch.randn(5, 4, 2, 4, 4)  # two batch dims
    out = net(x, torch.randn(4, 3))
    assert out.shape == (5, 4, 6, 4, 4)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised last conv
    with torch.no_grad():
        net.conv_out.weight.normal_()
    a = net(x[0, 0], torch.zeros(3))
    b = net(x[0, 0], torch.ones(3))
    assert not torch.allclose(a, b)  # the context matters
    with pytest.raises(ValueError, match="expected"):
        net(torch.randn(3, 4, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="odd"):
        ResNetConv(2, 8, 2, kernel_size=2)


@pytest.mark.parametrize(("size", "base"), [(4, 4), (2, 8)])
def test_a_unet_too_small_for_its_group_norms_says_so(size, base):
    """At a 1x1 lowest level with one channel per GroupNorm group there is one value to
    normalize; the error was torch's "Expected more than 1 value per channel"."""
    from pyro_gen.nn.unet import UNet

    net = UNet(1, base_channels=base, channel_mults=(1, 2, 2) if size == 4 else (1, 2))
    with pytest.raises(ValueError, match="lowest level is 1x1 .* larger base_channels"):
        net(torch.zeros(1, 1, size, size), torch.zeros(1))
    wider = UNet(1, base_channels=2 * base, channel_mults=(1, 2, 2) if size == 4 else (1, 2))
    assert wider(torch.zeros(1, 1, size, size), torch.zeros(1)).shape == (1, 1, size, size)


def test_a_context_batch_that_does_not_broadcast_is_named():
    from pyro_gen.nn.mlp import broadcast_context

    with pytest.raises(
        ValueError, match=r"context's batch shape \(4,\).*input's batch shape \(5,\)"
    ):
        broadcast_context(torch.zeros(5, 3), torch.ones(4, 2), 1)
    made = MADE(3, [8], context_dim=2)
    with pytest.raises(ValueError, match="does not broadcast"):
        made(torch.zeros(5, 3), torch.ones(4, 2))
    # A coupling's conditioner sees half of the user's input: the message names batch shapes
    # only (it gave "input shape (7, 2)" for the user's (7, 3)).
    from pyro_gen.transforms import conditional_affine_coupling

    coupling = conditional_affine_coupling(3, 2, hidden_dims=[8]).condition(torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"input's batch shape \(7,\)") as info:
        coupling(torch.randn(7, 3))
    assert "(7, 2)" not in str(info.value)
