"""Choosing the sampler of a diffusion model's generative program, as a Pyro user draws it:
``Predictive(m.model, ...)(None, n, sampler=..., sampler_kwargs={...})`` and ``poutine``.

``model(None, n)`` always ran the default sampler (a score model's predictor-corrector with 500
steps, a DDPM's ancestral chain), and ``sampler=`` went on to the user's network as if it were a
label (``forward() got an unexpected keyword argument 'sampler'``). Checked: the deterministic
samplers (probability-flow ODE, DDIM at eta=0) give the same draws from the same prior draw
whatever the random state, equal to the model's own ``sample`` from that start; stochastic ones
equal ``sample`` under the same seed; step counts are the network calls made; vectorized
``Predictive`` transports each of its prior draws; mistakes get one error each.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive
from torch import nn

from pyro_gen.diffusion import DDPM, VPSDE, DDPMScore, ScoreModel, ddim_sample, sample


class CountingNet(nn.Module):
    """A user's network of (x, t) that counts its calls (one network evaluation each)."""

    def __init__(self, features: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(features + 1, features)
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        flat = x.reshape(x.shape[0], -1)
        t = t.to(x.dtype).expand(x.shape[:1])[:, None] / 10
        return self.lin(torch.cat([flat, t], -1)).reshape(x.shape)


def _score_model() -> ScoreModel:
    return ScoreModel(CountingNet(), VPSDE(), (2,))


def _ddpm(**kwargs) -> DDPM:
    return DDPM(CountingNet(), (2,), timesteps=10, **kwargs)


def _draw(model, site: str, z: torch.Tensor, seed: int, **kwargs) -> dict:
    """A trace of the generative program with its prior site fixed to ``z``."""
    torch.manual_seed(seed)
    tr = poutine.trace(poutine.condition(model, {site: z})).get_trace(
        None, num_samples=z.shape[0], **kwargs
    )
    return {name: node["value"] for name, node in tr.nodes.items() if node["type"] == "sample"}


ODE = {"sampler": "ode", "sampler_kwargs": {"rtol": 1e-5, "atol": 1e-5}}


def test_a_score_models_program_runs_the_ode_sampler_it_is_given():
    m = _score_model()
    z = torch.randn(5, 2)
    first = _draw(m.model, "x_1", z, seed=1, **ODE)["x"]
    again = _draw(m.model, "x_1", z, seed=2, **ODE)["x"]
    assert torch.equal(first, again)  # deterministic: the random state plays no part
    torch.testing.assert_close(first, m.sample(5, "ode", x_init=z, rtol=1e-5, atol=1e-5))
    # the default (predictor-corrector) is stochastic: the same start gives other draws
    assert not torch.equal(_draw(m.model, "x_1", z, seed=1)["x"], _draw(m.model, "x_1", z, 2)["x"])


@pytest.mark.parametrize(
    "sampler, options, calls",
    [
        ("euler_maruyama", {"steps": 7}, 7),
        ("pc", {"steps": 4}, 8),  # a predictor and a corrector call per step
        ("langevin", {"steps": 2, "steps_per_level": 3}, 7),  # 2 levels x 3, one denoising
        ("ode", {"method": "rk4", "options": {"step_size": 0.25}}, 16),  # 4 steps x 4 stages
    ],
)
def test_a_score_models_program_takes_the_samplers_settings(sampler, options, calls):
    m = _score_model()
    z = torch.randn(3, 2)
    m.net.calls = 0
    x = _draw(m.model, "x_1", z, seed=4, sampler=sampler, sampler_kwargs=options)["x"]
    assert m.net.calls == calls
    torch.manual_seed(4)
    torch.testing.assert_close(x, m.sample(3, sampler, x_init=z, **options), rtol=0, atol=0)


def test_the_default_program_is_the_default_sampler():
    m = _score_model()
    z = torch.randn(3, 2)
    m.net.calls = 0
    x = _draw(m.model, "x_1", z, seed=5)["x"]
    assert m.net.calls == 1000  # pc: 500 steps, two calls each
    torch.manual_seed(5)
    assert torch.equal(x, m.sample(3, x_init=z))


def test_vectorized_predictive_transports_each_prior_draw_with_the_chosen_sampler():
    m = _score_model()
    draws = Predictive(m.model, num_samples=3, parallel=True)(None, 4, **ODE)
    assert draws["x"].shape == (3, 4, 2)
    want = m.sample(12, "ode", x_init=draws["x_1"].reshape(12, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(draws["x"], want.reshape(3, 4, 2))


def test_a_ddpms_program_runs_ddim_with_its_steps():
    m = _ddpm()
    z = torch.randn(5, 2)
    m.net.calls = 0
    ddim = {"sampler": "ddim", "sampler_kwargs": {"steps": 3}}
    first = _draw(m.model, "x_10", z, seed=1, **ddim)
    assert m.net.calls == 3
    assert sorted(first) == ["data", "x", "x_0", "x_10"]  # the plate, the prior, the draw
    again = _draw(m.model, "x_10", z, seed=2, **ddim)
    assert torch.equal(first["x"], again["x"])  # DDIM at eta=0 is deterministic
    torch.testing.assert_close(first["x"], ddim_sample(m, 5, steps=3, x_T=z), rtol=0, atol=0)
    torch.testing.assert_close(first["x_0"], first["x"])  # continuous data: one space
    # eta > 0 draws noise between steps: same seed, same draws as the sampler itself
    noisy = {"sampler": "ddim", "sampler_kwargs": {"steps": 4, "eta": 1.0}}
    x = _draw(m.model, "x_10", z, seed=7, **noisy)["x"]
    torch.manual_seed(7)
    torch.testing.assert_close(x, ddim_sample(m, 5, steps=4, eta=1.0, x_T=z), rtol=0, atol=0)


def test_a_ddpms_program_runs_a_score_sampler_through_its_sde():
    m = _ddpm(ema_decay=0.5)
    m.update_ema()  # an average (of the initial weights); before any, the EMA has none
    with torch.no_grad():
        m.net.lin.weight.add_(0.3)  # the EMA keeps the initial weights: now they differ
    z = torch.randn(4, 2)
    x = _draw(m.model, "x_10", z, seed=1, **ODE)["x"]
    assert torch.equal(x, _draw(m.model, "x_10", z, seed=2, **ODE)["x"])
    # the program uses the current weights, as its ancestral chain does
    want = sample(DDPMScore(m, use_ema=False), 4, "ode", x_init=z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x, want)
    ema = sample(DDPMScore(m, use_ema=True), 4, "ode", x_init=z, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(x, ema)


def test_a_ddpms_default_program_is_still_its_chain_of_sites():
    m = _ddpm()
    names = sorted(pyro.infer.Predictive(m.model, num_samples=1)(None, 3))
    assert names == sorted(["x", "x_0", *(f"x_{t}" for t in range(1, 11))])
    same = sorted(pyro.infer.Predictive(m.model, num_samples=1)(None, 3, sampler="ancestral"))
    assert same == names


def test_an_image_ddpms_ddim_program_gives_images_and_model_space_levels():
    m = DDPM(CountingNet(16), (4, 4), timesteps=10)
    draws = Predictive(m.model, num_samples=2, parallel=True)(
        None, 3, sampler="ddim", sampler_kwargs={"steps": 2}
    )
    assert draws["x"].shape == (2, 3, 4, 4) and draws["x_0"].shape == (2, 3, 1, 4, 4)
    assert float(draws["x"].min()) >= 0 and float(draws["x"].max()) <= 1
    flat_T = draws["x_10"].reshape(6, 1, 4, 4)
    want = ddim_sample(m, 6, steps=2, x_T=flat_T).reshape(2, 3, 4, 4)
    torch.testing.assert_close(draws["x"], want)
    torch.testing.assert_close(draws["x_0"][:, :, 0], want * 2 - 1)


def test_mistakes_in_the_sampler_choice_get_one_error_each():
    m, d = _score_model(), _ddpm()
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="sampler must be one of .*'ode'.*got 'ddim'"):
        m.model(None, 3, sampler="ddim")
    with pytest.raises(ValueError, match="sampler must be one of .*'ddim'.*got 'heun'"):
        d.model(None, 3, sampler="heun")
    with pytest.raises(ValueError, match="given data x the model is the training objective"):
        m.model(x, sampler="ode")
    with pytest.raises(ValueError, match="given data x the model is the training objective"):
        d.model(x, sampler_kwargs={"steps": 3})
    with pytest.raises(ValueError, match="may not set \\['x_init'\\]"):
        m.model(None, 3, sampler="ode", sampler_kwargs={"x_init": x})
    with pytest.raises(TypeError, match="sampler_kwargs must be a dict"):
        d.model(None, 3, sampler="ddim", sampler_kwargs=[("steps", 3)])
    with pytest.raises(ValueError, match="'ancestral'.*setting is use_ema.*\\['steps'\\]"):
        d.model(None, 3, sampler_kwargs={"steps": 3})
    # a setting the sampler does not have is the sampler's own error
    with pytest.raises(TypeError, match="eta"):
        m.model(None, 3, sampler="ode", sampler_kwargs={"eta": 1.0})


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_a_ddpms_program_draws_with_the_ema_weights_when_asked(sampler):
    # sample() draws with the EMA's weights by default; the program keeps the network's own
    # (as its chain always did) unless sampler_kwargs={"use_ema": True}
    m = _ddpm(ema_decay=0.5)
    m.update_ema()  # an average (of the initial weights); before any, the EMA has none
    with torch.no_grad():
        m.net.lin.weight.add_(0.3)  # the EMA keeps the initial weights: now they differ
    z = torch.randn(4, 2)
    options = {"use_ema": True, **({"steps": 3} if sampler == "ddim" else {})}
    x = _draw(m.model, "x_10", z, seed=3, sampler=sampler, sampler_kwargs=options)["x"]
    plain = {k: v for k, v in options.items() if k != "use_ema"}
    current = _draw(m.model, "x_10", z, seed=3, sampler=sampler, sampler_kwargs=plain)["x"]
    with m.ema.average_parameters():
        averaged = _draw(m.model, "x_10", z, seed=3, sampler=sampler, sampler_kwargs=plain)["x"]
    assert torch.equal(x, averaged) and not torch.allclose(x, current)
    weight = m.net.lin.weight.detach().clone()
    _draw(m.model, "x_10", z, seed=3, sampler=sampler, sampler_kwargs=options)
    assert torch.equal(m.net.lin.weight, weight)  # the network's own weights restored
    with pytest.raises(ValueError, match="keeps no EMA.*ema_decay"):
        _ddpm().model(None, 2, sampler=sampler, sampler_kwargs=options)


def test_a_flow_matching_program_takes_its_solvers_settings():
    from pyro_gen.diffusion import FlowMatching
    from pyro_gen.transforms.continuous import ContinuousFlow

    fm = FlowMatching(ContinuousFlow(CountingNet(), (2,), rtol=1e-6, atol=1e-6))
    z = torch.randn(3, 2)
    rk4 = {"method": "rk4", "options": {"step_size": 0.25}}
    fm.flow.dynamics.calls = 0
    x = _draw(fm.model, "z", z, seed=1, sampler="ode", sampler_kwargs=rk4)["x"]
    assert fm.flow.dynamics.calls == 16  # 4 steps x 4 stages
    torch.testing.assert_close(x, fm.transport(z, **rk4), rtol=0, atol=0)
    # without settings: the flow's own solver, as sample() uses
    default = _draw(fm.model, "z", z, seed=1)["x"]
    torch.testing.assert_close(default, fm.transport(z), rtol=0, atol=0)
    assert not torch.allclose(default, x, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="sampler must be one of \\('ode',\\), got 'pc'"):
        fm.model(None, num_samples=3, sampler="pc")
    with pytest.raises(ValueError, match="given data x the model is the training objective"):
        fm.model(torch.randn(4, 2), sampler_kwargs=rk4)


def test_a_flow_matching_program_refuses_a_count_in_the_couplings_slot():
    # model(None, 5), as the DDPM's and the score model's programs are called, gave one draw:
    # the 5 went to the coupling z, which the program without data ignored
    from pyro_gen.diffusion import FlowMatching
    from pyro_gen.transforms.continuous import ContinuousFlow

    fm = FlowMatching(ContinuousFlow(CountingNet(), (2,), rtol=1e-4, atol=1e-4))
    with pytest.raises(ValueError, match="got z=5 without data.*model\\(None, num_samples=5\\)"):
        Predictive(fm.model, num_samples=1)(None, 5)
    with pytest.raises(ValueError, match="got z=tensor of shape \\(5, 2\\) without data"):
        fm.model(None, torch.randn(5, 2))
    assert Predictive(fm.model, num_samples=1)(None, num_samples=5)["x"].shape == (1, 5, 2)
