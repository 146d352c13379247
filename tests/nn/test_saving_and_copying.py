"""Every network through what a Pyro user does with one: ``pyro.module`` and a param-store
save/load round trip (outputs restored exactly), pickling, ``copy.deepcopy`` and
``.to(float64)`` (buffers such as MADE's masks and the time frequencies included)."""

from __future__ import annotations

import copy
import pickle

import pyro
import pytest
import torch

from pyro_gen.nn import (
    MADE,
    MLP,
    DCGANDiscriminator,
    DCGANGenerator,
    MLPGenerator,
    ResNetConv,
    TimeMLP,
    UNet,
)

NETWORKS = {
    "made": lambda: (
        MADE(3, [8], 2, context_dim=1, zero_init_output=False),
        (torch.randn(4, 3), torch.randn(1)),
    ),
    "mlp": lambda: (MLP(3, [8], 2), (torch.randn(4, 3),)),
    "resnet": lambda: (ResNetConv(1, 4, 1, zero_init_output=False), (torch.randn(2, 1, 5, 5),)),
    "unet": lambda: (UNet(1, 8, (1, 2)), (torch.randn(2, 1, 4, 4), torch.tensor([1, 2]))),
    "time_mlp": lambda: (TimeMLP(2, 8), (torch.randn(2, 2), torch.tensor([1, 2]))),
    "mlp_generator": lambda: (MLPGenerator(2, (3,), (8,)), (torch.randn(4, 2),)),
    "dcgan_generator": lambda: (DCGANGenerator(4, width=4), (torch.randn(2, 4),)),
    "dcgan_discriminator": lambda: (DCGANDiscriminator(width=4), (torch.rand(2, 28, 28),)),
}


def _build(name: str):
    torch.manual_seed(0)
    net, args = NETWORKS[name]()
    return net.eval(), args  # eval: batch norm's running statistics, not the batch's


@pytest.mark.parametrize("name", list(NETWORKS))
def test_param_store_round_trip_restores_outputs_exactly(name, tmp_path) -> None:
    net, args = _build(name)
    expected = net(*args)
    pyro.clear_param_store()
    pyro.module(name, net)
    pyro.get_param_store().save(tmp_path / "params.pt")
    fresh, _ = _build(name)
    with torch.no_grad():
        for q in fresh.parameters():
            q.normal_()
    assert not torch.equal(fresh(*args), expected)
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    pyro.module(name, fresh, update_module_params=True)
    assert torch.equal(fresh(*args), expected)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_pickle_deepcopy_and_float64(name) -> None:
    net, args = _build(name)
    expected = net(*args)
    assert torch.equal(pickle.loads(pickle.dumps(net))(*args), expected)
    twin = copy.deepcopy(net)
    assert torch.equal(twin(*args), expected)
    wide = twin.to(torch.float64)
    assert all(b.dtype == torch.float64 for b in wide.buffers() if b.is_floating_point())
    args64 = [a.double() if a.is_floating_point() else a for a in args]
    out = wide(*args64)
    assert out.dtype == torch.float64
    assert torch.allclose(out.float(), expected, atol=1e-5)
