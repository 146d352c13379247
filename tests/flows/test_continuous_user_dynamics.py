"""Continuous flows with a user's own dynamics network, as a Pyro user writes one.

Users of neural ODEs write the vector field in torchdiffeq's ``func(t, z)`` order;
``ContinuousFlow`` calls ``f(z, t)``. A swapped network used to fail deep inside the solver
with torch's own message ("both arguments to linear need to be at least 1D"); now the error
names the calling convention and what to write. The network in the documented order gives
the closed-form density of a linear ODE.
"""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_gen.transforms import ContinuousFlow

F64 = torch.float64
A = torch.tensor([[-0.3, 0.5], [0.2, 0.4]], dtype=F64)


class TorchdiffeqOrder(nn.Module):
    """``dz/dt = A z`` written as torchdiffeq's ``func(t, z)``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(A.clone())

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return z @ self.a.T


class NoTime(nn.Module):
    """An autonomous field written without a time argument."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(A.clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.a.T


class DocumentedOrder(TorchdiffeqOrder):
    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return z @ self.a.T


def _density(net: nn.Module) -> dist.TransformedDistribution:
    flow = ContinuousFlow(net, (2,), trace="exact", rtol=1e-9, atol=1e-9)
    base = dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1)
    return dist.TransformedDistribution(base, [flow])


@pytest.mark.parametrize(
    "net, error", [(TorchdiffeqOrder, RuntimeError), (NoTime, TypeError)], ids=["t_z", "no_t"]
)
def test_dynamics_in_another_argument_order_is_one_clear_error(net, error) -> None:
    d = _density(net())
    with pytest.raises(error, match=r"called as f\(z, t\) with z of shape \(4, 2\)") as info:
        d.log_prob(torch.randn(4, 2, dtype=F64))
    assert "torchdiffeq's func(t, z)" in str(info.value)
    assert "write forward(self, z, t)" in str(info.value)
    # the network's own error is kept, as the cause and in the message
    assert isinstance(info.value.__cause__, error)
    assert str(info.value.__cause__) in str(info.value)


def test_a_field_of_the_wrong_shape_names_the_convention() -> None:
    class Summed(nn.Module):
        def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return z.sum(-1)

    with pytest.raises(ValueError, match=r"drift returned shape \(4,\), expected \(4, 2\)") as info:
        _density(Summed()).log_prob(torch.randn(4, 2, dtype=F64))
    assert "call the dynamics as f(z, t)" in str(info.value)


def test_the_documented_order_gives_the_linear_odes_density() -> None:
    r"""Data at ``t0 = 0``, base at ``t1 = 1``: :math:`u = e^{A} x` and
    :math:`\log p(x) = \log \mathcal N(e^{A} x; 0, I) + \operatorname{tr} A`."""
    x = torch.randn(4, 2, dtype=F64)
    u = x @ torch.linalg.matrix_exp(A).T
    expected = dist.Normal(0.0, 1.0).log_prob(u).sum(-1) + A.trace()
    torch.testing.assert_close(_density(DocumentedOrder()).log_prob(x), expected)
