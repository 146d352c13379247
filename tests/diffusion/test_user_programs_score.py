"""A score model around a user's own network (its own ``forward(x, t, y=None)``, float64 built by
hand: no ``torch.set_default_dtype``), trained and read the ways a Pyro user would.

Checked against closed forms on Gaussian data :math:`\\mathcal N(\\mu, s^2)`: under a VP or VE
SDE the perturbed data are :math:`\\mathcal N(\\alpha\\mu, \\alpha^2 s^2 + \\sigma^2)`, so the
exact score, the samplers' marginals at the data end and the probability-flow log-density are
known; against Pyro's own ``SVI`` on the same seed (``fit(compile=False)`` bit for bit) and
between the ways labels reach the network (by name, dicts, a DataLoader of dicts; by position
refused in one error); against a straight run for a run resumed from fit's checkpoint and a
network restored from a saved param store.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from torch import nn

from pyro_gen.diffusion import VESDE, VPSDE, ScoreModel, build_ddpm
from pyro_gen.infer import fit
from tests.diffusion.gaussian_classes import MEANS, MU, D, S, assert_each_class_at_its_gaussian


class OracleEps(nn.Module):
    """A user's network predicting the noise of Gaussian data (class means given labels)
    exactly, with a parameter that stays 0 unless trained; it keeps the shapes it was given."""

    def __init__(self, sde) -> None:  # noqa: ANN001
        super().__init__()
        self.sde = sde
        self.offset = nn.Parameter(torch.zeros(2, dtype=D))
        self.seen: list[tuple] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        self.seen.append((tuple(x.shape), tuple(t.shape), y))
        alpha, sigma = (v[:, None] for v in self.sde.marginal(t))
        mu = MU if y is None else MEANS[y]
        return sigma * (x - alpha * mu) / (alpha**2 * S**2 + sigma**2) + self.offset


def marginal(sde, t: float) -> torch.distributions.Normal:  # noqa: ANN001
    """The perturbed data at time ``t``."""
    alpha, sigma = sde.marginal(torch.tensor(t, dtype=D))
    return torch.distributions.Normal(alpha * MU, (alpha**2 * S**2 + sigma**2).sqrt())


SDES = {"vp": VPSDE, "ve": lambda: VESDE(0.01, 8.0)}


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_a_users_network_gives_the_exact_score_samples_and_density(sde_name):
    sde = SDES[sde_name]()
    net = OracleEps(sde)
    m = ScoreModel(net, sde, (2,))
    x = MU + S * torch.randn(3, 4, 2, dtype=D)  # extra batch dims
    for t in (0.05, 0.7):
        score = m.score(x, t)
        p = marginal(sde, t)
        torch.testing.assert_close(score, -(x - p.loc) / p.scale**2, rtol=1e-12, atol=1e-12)
    # the samplers reach the marginal at the data end (5 standard errors of the mean, 6% std)
    end = marginal(sde, m.eps)
    n = 1000
    for sampler, kwargs in (("euler_maruyama", {"steps": 150}), ("ode", {})):
        draws = m.sample(n, sampler, **kwargs)
        assert draws.dtype == D and draws.shape == (n, 2)
        assert ((draws.mean(0) - end.loc).abs() < 5 * end.scale / n**0.5).all(), sampler
        assert ((draws.std(0) / end.scale - 1).abs() < 0.06).all(), sampler
    # the probability-flow density, from the exact density at t = 1, is the exact one at eps
    prior = marginal(sde, 1.0)
    lp = m.log_prob(x, rtol=1e-8, atol=1e-8, prior_log_prob=lambda z: prior.log_prob(z).sum(-1))
    assert lp.dtype == D and lp.shape == (3, 4)
    torch.testing.assert_close(lp, end.log_prob(x).sum(-1), rtol=0, atol=1e-5)
    # the network saw flat batches of its own (rows, 2) and (rows,): what it was written for
    assert {(len(xs), len(ts), xs[0] == ts[0], xs[1]) for xs, ts, _ in net.seen} == {
        (2, 1, True, 2)
    }
    assert torch.get_default_dtype() == torch.float32


class SmallNet(nn.Module):
    """A user's score network with its own way of reading time."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 2)).to(D)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None].log()], -1))


def _trained(train, seed: int = 0) -> ScoreModel:  # noqa: ANN001
    pyro.clear_param_store()
    torch.manual_seed(seed)
    m = ScoreModel(SmallNet(), VPSDE(), (2,), time_samples=2)
    pyro.set_rng_seed(1)
    train(m)
    return m


def _params(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


BATCHES = [(MU + S * torch.randn(16, 2, dtype=D),) for _ in range(3)]


def test_fit_without_compile_takes_pyro_svi_steps_on_a_users_score_network():
    def svi(m):  # noqa: ANN001, ANN202
        step = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        for _ in range(2):
            for batch in BATCHES:
                step.step(*batch)

    def with_fit(m):  # noqa: ANN001, ANN202
        fit(m, BATCHES, epochs=2, optim=pyro.optim.Adam({"lr": 1e-2}), compile=False,
            progress=False)  # fmt: skip

    expected = _params(_trained(svi))
    m = _trained(with_fit)
    assert _same(_params(m), expected)
    assert all(p.dtype == D for p in m.parameters())
    assert torch.get_default_dtype() == torch.float32


def test_a_run_resumed_from_fits_checkpoint_and_a_saved_param_store_are_the_straight_run(
    tmp_path,
):
    x = torch.cat([b[0] for b in BATCHES])

    def run(steps, **kwargs):  # noqa: ANN001, ANN003, ANN202
        return lambda m: fit(
            m, x, steps=steps, batch_size=16, compile=False, progress=False, **kwargs
        )

    straight = _trained(run(6))
    _trained(run(3, checkpoint_dir=tmp_path))
    resumed = _trained(run(6, checkpoint_dir=tmp_path), seed=5)  # fresh weights and seed
    assert _same(_params(resumed), _params(straight))
    # the param store saved and loaded into a fresh score model, as Pyro restores a module
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    torch.manual_seed(9)
    fresh = ScoreModel(SmallNet(), VPSDE(), (2,))
    pyro.get_param_store().load(tmp_path / "params.pt")
    pyro.module(fresh.name, fresh, update_module_params=True)
    torch.testing.assert_close(fresh.score(x, 0.3), straight.score(x, 0.3), rtol=0, atol=0)


def test_labels_reach_the_network_by_name_and_by_position_are_one_clear_error():
    sde = VPSDE()
    y = torch.arange(12) % 3
    x = MEANS[y] + S * torch.randn(12, 2, dtype=D)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 12

        def __getitem__(self, i: int) -> dict:
            return {"x": x[i], "y": y[i]}

    # batches as they come (a dict of tensors is a data set fit shuffles); a DataLoader draws
    # its base seed from torch's RNG at each pass: a loop over it is fit's reference
    loader = torch.utils.data.DataLoader(Pairs(), batch_size=12)
    forms = {
        "svi, by name": lambda step: step(x, y=y),
        "fit, dict batches": [{"x": x, "y": y}],
        "svi, DataLoader of dicts": lambda step: [step(**batch) for batch in loader],
        "fit, DataLoader of dicts": loader,
    }
    states = {}
    for form, data in forms.items():
        pyro.clear_param_store()
        net = OracleEps(sde)
        m = ScoreModel(net, sde, (2,), time_samples=2)
        optim = pyro.optim.Adam({"lr": 1e-2})
        pyro.set_rng_seed(3)
        if callable(data):
            data(SVI(m.model, m.guide, optim, Trace_ELBO()).step)
        else:
            fit(m, data, epochs=1, batch_size=12, optim=optim, compile=False, progress=False)
        states[form] = _params(m)
        # each of the 2 time samples of each example saw that example's label
        _, _, labels = net.seen[-1]
        assert torch.equal(labels, y.repeat(2)), form
    for form in forms:
        reference = "svi, DataLoader of dicts" if "DataLoader" in form else "svi, by name"
        assert _same(states[form], states[reference]), form
    # labels by position land where a count goes, and would silently train no label
    m = ScoreModel(OracleEps(sde), sde, (2,))
    ddpm = build_ddpm((2,), timesteps=4, hidden_dim=8, num_classes=3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    for model, data in ((m, (x, y)), (m, loader), (ddpm, (x.float(), y))):
        with pytest.raises(ValueError, match=r"by position after x.*y=labels.*\{'x': x, 'y': y\}"):
            fit(model, data, epochs=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="by position after x"):
        SVI(m.model, m.guide, pyro.optim.Adam({}), Trace_ELBO()).step(x, y)


def test_predictive_draws_each_label_at_its_class_gaussian():
    sde = VPSDE()
    m = ScoreModel(OracleEps(sde), sde, (2,))
    y = torch.arange(450) % 3
    draws = Predictive(m.model, num_samples=1)(num_samples=450, y=y)
    x = draws["x"][0]
    assert x.dtype == D and draws["x_1"].shape == (1, 450, 2)
    assert_each_class_at_its_gaussian(x, y, slack=0.01)
