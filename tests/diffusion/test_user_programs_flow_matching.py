"""Flow matching around a user's own velocity network (``forward(x, t, y=None)``, float64 built
by hand: no ``torch.set_default_dtype``) in the programs a Pyro user writes.

Checked against closed forms on Gaussian data :math:`\\mathcal N(\\mu, s^2)` (labels: one mean
per class): rectified flow's marginal field :math:`\\mathbb E[z - x \\mid x_\\tau]` is linear in
:math:`x_\\tau` and carries the data to :math:`\\mathcal N(0, I)` exactly, so the ODE's samples
and log-density are the data's; against Pyro's own ``SVI`` on the same seed
(``fit(compile=False)`` bit for bit, with labels by name and as dict batches) and against a
straight run for a run resumed from fit's checkpoint.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from torch import nn

from pyro_gen.diffusion import FlowMatching
from pyro_gen.infer import fit
from pyro_gen.transforms.continuous import ContinuousFlow
from tests.diffusion.gaussian_classes import MEANS, MU, D, S, assert_each_class_at_its_gaussian


class OracleVelocity(nn.Module):
    """A user's velocity network: the exact marginal field of rectified flow for Gaussian data
    (class means given labels), plus a weight that moves only when trained."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, dtype=D))
        self.seen: list[tuple] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        self.seen.append((tuple(x.shape), tuple(t.shape), y))
        s = t.expand(x.shape[:1])[:, None]
        mu = MU if y is None else MEANS[y]
        # x_s = (1 - s) x + s z: Cov(z - x, x_s) = s - (1 - s) S^2, Var x_s = (1-s)^2 S^2 + s^2
        gain = (s - (1 - s) * S**2) / ((1 - s) ** 2 * S**2 + s**2)
        return -mu + gain * (x - (1 - s) * mu) + self.w * x


def flow_matching(net: nn.Module, **kwargs) -> FlowMatching:  # noqa: ANN003
    flow = ContinuousFlow(net, (2,), rtol=1e-7, atol=1e-7)
    return FlowMatching(flow, objective="rectified", **kwargs)


def test_a_users_exact_field_gives_the_data_density_and_samples_in_float64():
    net = OracleVelocity()
    fm = flow_matching(net)
    x = MU + S * torch.randn(8, 2, dtype=D)
    lp = fm.log_prob(x)
    assert lp.dtype == D
    data = torch.distributions.Normal(MU, S)
    torch.testing.assert_close(lp, data.log_prob(x).sum(-1), rtol=0, atol=1e-5)
    n = 1000
    draws = fm.sample(n)
    assert draws.dtype == D and draws.shape == (n, 2)
    assert ((draws.mean(0) - MU).abs() < 5 * S / n**0.5).all()
    assert ((draws.std(0) / S - 1).abs() < 0.06).all()
    # the ODE solves pass one 0-dim time, training one time per row: as documented
    assert {len(ts) for _, ts, _ in net.seen} == {0}
    pyro.set_rng_seed(0)
    Trace_ELBO().loss(fm.model, fm.guide, x)
    assert net.seen[-1][:2] == ((8, 2), (8,))
    assert torch.get_default_dtype() == torch.float32


def _params(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


def test_fit_without_compile_takes_pyro_svi_steps_with_labels_by_name():
    y = torch.arange(24) % 3
    x = MEANS[y] + S * torch.randn(24, 2, dtype=D)
    batches = [{"x": xb, "y": yb} for xb, yb in zip(x.split(8), y.split(8))]

    def run(train):  # noqa: ANN001, ANN202
        pyro.clear_param_store()
        net = OracleVelocity()
        fm = flow_matching(net, time_samples=2)
        pyro.set_rng_seed(1)
        train(fm)
        return fm, net

    def svi(fm):  # noqa: ANN001, ANN202
        step = SVI(fm.model, fm.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        for _ in range(2):
            for batch in batches:
                step.step(**batch)

    def with_fit(fm):  # noqa: ANN001, ANN202
        fit(fm, batches, epochs=2, optim=pyro.optim.Adam({"lr": 1e-2}), compile=False,
            progress=False)  # fmt: skip

    expected, _ = run(svi)
    fm, net = run(with_fit)
    assert _same(_params(fm), _params(expected))
    assert fm.flow.dynamics.w.abs().max() > 0  # it trained
    # the last step's rows: 2 time samples of the last batch, each with its example's label
    shape, times, labels = net.seen[-1]
    assert shape == (16, 2) and times == (16,) and torch.equal(labels, y[-8:].repeat(2))
    # labels by position land in the reflow coupling's place: one error naming the way out
    with pytest.raises(ValueError, match=r"labels .* go by name.*\{'x': x, 'y': y\}"):
        fit(fm, [(b["x"], b["y"]) for b in batches], epochs=1, progress=False)


def test_predictive_draws_each_label_at_its_class_gaussian():
    fm = flow_matching(OracleVelocity())
    y = torch.arange(450) % 3
    draws = Predictive(fm.model, num_samples=1)(num_samples=450, y=y)
    x = draws["x"][0]
    assert x.dtype == D and draws["z"].shape == (1, 450, 2)
    assert_each_class_at_its_gaussian(x, y, slack=0.0)


def test_a_run_resumed_from_fits_checkpoint_is_the_straight_run(tmp_path):
    x = MU + S * torch.randn(48, 2, dtype=D)

    def run(steps, **kwargs):  # noqa: ANN001, ANN003, ANN202
        pyro.clear_param_store()
        fm = flow_matching(OracleVelocity())
        pyro.set_rng_seed(kwargs.pop("seed", 2))
        fit(fm, x, steps=steps, batch_size=16, compile=False, progress=False, **kwargs)
        return _params(fm)

    straight = run(5)
    run(2, checkpoint_dir=tmp_path)
    assert _same(run(5, checkpoint_dir=tmp_path, seed=7), straight)
