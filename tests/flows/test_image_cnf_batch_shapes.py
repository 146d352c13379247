"""An image CNF in programs a Pyro user writes: scored under two plates and drawn by a
vectorized ``Predictive``.

An image CNF's conv dynamics took one batch dim only, so ``log_prob`` of a ``(G, N, C, H, W)``
batch (a flow likelihood under nested plates, or ``Predictive(parallel=True)``'s particles)
failed inside ``conv2d``, and the error blamed the user's argument order.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive

from pyro_gen.flows import CNF
from pyro_gen.transforms.ode_dynamics import ODEConvNet

FAST_ODE = dict(method="rk4", options={"step_size": 0.5})


def _image_cnf() -> CNF:
    torch.manual_seed(0)
    flow = CNF((1, 4, 4), hidden_dims=(4,), **FAST_ODE)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))  # away from the zero drift
    return flow


def test_conv_dynamics_take_any_batch_shape_and_one_time_per_example() -> None:
    torch.manual_seed(0)
    f = ODEConvNet(2, 4)
    z, t = torch.randn(3, 2, 2, 4, 4), torch.rand(3, 2)
    out = f(z, t)
    assert out.shape == z.shape
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(out[i, j], f(z[i, j], t[i, j]))
    # one time for all, and a single unbatched image
    torch.testing.assert_close(f(z, torch.tensor(0.3))[1], f(z[1], torch.tensor(0.3)))
    torch.testing.assert_close(f(z[0, 0], torch.tensor(0.3)), f(z[0, :1], torch.tensor(0.3))[0])


def test_an_image_cnf_scores_a_batch_under_two_plates_as_its_elements() -> None:
    flow = _image_cnf().eval()
    x = torch.rand(2, 3, 1, 4, 4)
    lp = flow.log_prob(x)
    assert lp.shape == (2, 3)
    torch.testing.assert_close(lp, flow.log_prob(x.reshape(6, 1, 4, 4)).reshape(2, 3))

    def model(x: torch.Tensor) -> None:
        with pyro.plate("groups", x.shape[0], dim=-2), pyro.plate("items", x.shape[1], dim=-1):
            pyro.sample("x", flow.distribution(), obs=x)

    trace = poutine.trace(model).get_trace(x)
    torch.testing.assert_close(trace.log_prob_sum(), lp.sum())


def test_a_vectorized_predictive_draws_an_image_cnf() -> None:
    flow = _image_cnf().eval()
    torch.manual_seed(1)
    draws = Predictive(flow.model, num_samples=2, parallel=True)(num_samples=3)["x"]
    assert draws.shape == (2, 3, 1, 4, 4)
    assert torch.isfinite(draws).all() and draws.unique().numel() == draws.numel()
    # the (2, 3) draws scored as one batch get the densities of their six elements
    flat = draws.reshape(6, 1, 4, 4)
    torch.testing.assert_close(flow.log_prob(draws).reshape(6), flow.log_prob(flat))
