"""Float64 data given to flow matching around a user's float32 velocity network (or the
reverse): a score model and a DDPM say which dtype to convert to, while flow matching met
torch's "mat1 and mat2 must have the same dtype" from inside the user's network in training,
``transport`` and ``log_prob``. Each now gets the score model's error; data in the network's
dtype still work, and give the same values as the network called directly."""

from __future__ import annotations

import pyro
import pytest
import torch
import torchdiffeq
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_gen.diffusion import VPSDE, FlowMatching, ScoreModel
from pyro_gen.transforms.continuous import ContinuousFlow
from tests.diffusion.user_network import Net

MESSAGE = r"float32 parameters but was given float64 data.*x\.to\(torch\.float32\)"


def flow_matching(net: nn.Module) -> FlowMatching:
    return FlowMatching(ContinuousFlow(net, (2,), rtol=1e-6, atol=1e-6))


def test_float64_data_get_the_score_models_error_in_every_entry_point():
    pyro.clear_param_store()
    fm, x = flow_matching(Net()), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match=MESSAGE):  # the score model's own, for comparison
        Trace_ELBO().loss(*(lambda m: (m.model, m.guide))(ScoreModel(Net(), VPSDE(), (2,))), x)
    with pytest.raises(TypeError, match=MESSAGE):
        Trace_ELBO().loss(fm.model, fm.guide, x)
    with pytest.raises(TypeError, match=MESSAGE):
        fm.transport(x)
    with pytest.raises(TypeError, match=MESSAGE):
        fm.log_prob(x)


def test_data_in_the_networks_dtype_still_flow():
    torch.manual_seed(0)
    net = Net().double()
    fm, x = flow_matching(net), torch.randn(4, 2, dtype=torch.float64)
    # velocity at path fraction s: the network at flow time t0 + s (t1 - t0) = s
    s = torch.rand(4, dtype=torch.float64)
    assert torch.equal(fm.velocity(x, s), net(x, s))
    # the field is affine in x, so its divergence is tr(W_x) at every time: log p(x) is the
    # base density at the data's image z plus tr(W_x) (flow time 0 to 1); transport inverts
    with torch.no_grad():
        z = torchdiffeq.odeint(lambda t, y: net(y, t), x, x.new_tensor([0.0, 1.0]), rtol=1e-9)[-1]
    exact = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) + net.lin.weight[:, :2].trace()
    assert torch.allclose(fm.log_prob(x), exact, atol=1e-5)
    assert torch.allclose(fm.transport(z), x, atol=1e-5)
