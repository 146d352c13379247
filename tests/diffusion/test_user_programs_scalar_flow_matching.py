"""Flow matching on scalar data (event shape ``()``, data of shape ``(batch,)``), as the score
model and the DDPM take them: training failed with "Dimension out of range (expected to be in
range of [-2, 1], but got 2)" where the loss summed event dims there are none of. Its loss
and gradients are now those of the same data as vectors of one, ``(batch, 1)``, on the same
draws."""

from __future__ import annotations

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_gen.diffusion import FlowMatching
from pyro_gen.transforms.continuous import ContinuousFlow


class Velocity(nn.Module):
    """A user's velocity network for vectors of one, ``(B, 1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([x, t.to(x.dtype).expand(x.shape[:1])[:, None]], -1))


class Scalar(nn.Module):
    """The same network for scalars, ``(B,)``."""

    def __init__(self, vector: Velocity) -> None:
        super().__init__()
        self.vector = vector

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.vector(x[:, None], t)[:, 0]


def test_scalar_data_train_as_vectors_of_one():
    torch.manual_seed(0)
    net, x = Velocity(), torch.randn(8)
    losses, grads = [], []
    for flow_net, shape, data in ((Scalar(net), (), x), (net, (1,), x[:, None])):
        pyro.clear_param_store()
        fm = FlowMatching(ContinuousFlow(flow_net, shape), time_samples=2)
        pyro.set_rng_seed(1)
        losses.append(Trace_ELBO().differentiable_loss(fm.model, fm.guide, data))
        grads.append(torch.autograd.grad(losses[-1], net.lin.weight)[0])
    assert torch.allclose(losses[0], losses[1]) and torch.allclose(grads[0], grads[1])
    # and Pyro's own loop steps it
    pyro.clear_param_store()
    fm = FlowMatching(ContinuousFlow(Scalar(Velocity()), ()))
    svi = SVI(fm.model, fm.guide, pyro.optim.ClippedAdam({"lr": 1e-2}), Trace_ELBO())
    assert torch.isfinite(torch.tensor(svi.step(x)))
    assert fm.sample(3).shape == (3,) and fm.log_prob(x).shape == (8,)
