"""pyro_gen's own networks as class-conditional networks: ``TimeMLP(..., num_classes=K)`` and
``UNet(..., num_classes=K)`` (and ``build_ddpm(..., num_classes=K)``) take integer labels
``y`` whose learned embedding joins the time embedding.

Checked: a DDPM built so and trained by ``fit`` on two well separated classes draws each
label's samples at its own class mean (against the data's class means, with the other label
far off); the label moves the image network's output and its table gets gradients; a label
missing, given to a network without classes, or not integers gets one error naming it.
"""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_gen.diffusion import build_ddpm
from pyro_gen.infer import fit
from pyro_gen.nn import TimeMLP, UNet

MU = torch.tensor([[2.0, 2.0], [-2.0, -1.0]])


def test_a_conditional_ddpm_trained_by_fit_samples_each_class_at_its_mean():
    pyro.clear_param_store()
    torch.manual_seed(0)
    y = torch.randint(0, 2, (2000,))
    x = MU[y] + 0.3 * torch.randn(2000, 2)
    m = build_ddpm((2,), timesteps=50, hidden_dim=64, num_classes=2, objective="simple")
    fit(m, {"x": x, "y": y}, steps=600, batch_size=256, progress=False,
        optim=pyro.optim.Adam({"lr": 3e-3}))  # fmt: skip
    labels = torch.tensor([0] * 300 + [1] * 300)
    draws = m.sample(600, context={"y": labels})
    for k in (0, 1):
        mean = draws[labels == k].mean(0)
        assert (mean - MU[k]).abs().max() < 0.3
        assert (mean - MU[1 - k]).abs().max() > 2.5


def test_the_label_moves_the_image_network_and_its_table_learns():
    torch.manual_seed(0)
    net = UNet(1, base_channels=8, channel_mults=(1, 2), num_classes=3)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 3])
    a, b = net(x, t, y=torch.tensor([0, 0])), net(x, t, y=torch.tensor([0, 2]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
    m = build_ddpm((1, 8, 8), timesteps=5, base_channels=8, num_classes=3)
    pyro.clear_param_store()
    before = m.net.label.weight.detach().clone()
    fit(m, {"x": torch.rand(4, 1, 8, 8), "y": torch.tensor([0, 1, 2, 1])}, steps=2,
        batch_size=4, progress=False)  # fmt: skip
    assert not torch.equal(before, m.net.label.weight)
    assert m.sample(2, context={"y": torch.tensor([2, 0])}).shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    "net, kwargs, match",
    [
        (TimeMLP(2, 8, num_classes=2), {}, r"num_classes=2 and needs labels: pass y="),
        (TimeMLP(2, 8), {"y": torch.tensor([0, 1])}, r"built without classes.*num_classes"),
        (TimeMLP(2, 8, num_classes=2), {"y": torch.tensor([0.0, 1.0])}, r"must be integers"),
        (TimeMLP(2, 8, num_classes=2), {"y": torch.tensor([0])}, r"one per example \(2\)"),
    ],
)
def test_labels_missing_unexpected_or_not_integers_are_named(net, kwargs, match):
    with pytest.raises(ValueError, match=match):
        net(torch.randn(2, 2), torch.tensor([1, 2]), **kwargs)
    with pytest.raises(ValueError, match="num_classes must be a whole number"):
        TimeMLP(2, 8, num_classes=0)
