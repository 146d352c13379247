"""A continuous flow solved with the adjoint method differentiates with respect to its
input: what HMC's potential gradient (NeuTra), a reparameterized sample pushed through the
flow, or any score with respect to data needs."""

from __future__ import annotations

import copy

import pytest
import torch

from pyro_gen.transforms import cnf


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
def test_adjoint_input_gradients_are_the_direct_solves(frozen: bool) -> None:
    """With the input requiring grad, the adjoint's forward solve failed ("The differentiated
    Tensor ... appears to not have been used in the graph"): under its no_grad the state is
    a view of the input, whose gradient autograd routes to the base. Its gradients now equal
    those of backpropagating through the same fixed-step solve (rk4, step 0.01: the two
    differ by the discretization of the adjoint ODE only)."""
    torch.manual_seed(0)
    direct = cnf(2, (16,), method="rk4", options={"step_size": 0.01}).double()
    for p in direct.parameters():
        p.data.normal_(0, 0.5)
    adjoint = copy.deepcopy(direct)
    adjoint.adjoint = True
    grads = []
    for flow in (direct, adjoint):
        flow.requires_grad_(not frozen)
        x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        x.requires_grad_(True)
        for inverse in (False, True):
            y = flow.inv(x) if inverse else flow(x)
            ladj = flow.log_abs_det_jacobian(y, x) if inverse else flow.log_abs_det_jacobian(x, y)
            grads.append(torch.autograd.grad((y**2).sum() + ladj.sum(), x)[0])
    torch.testing.assert_close(grads[2], grads[0], atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(grads[3], grads[1], atol=1e-7, rtol=1e-6)
