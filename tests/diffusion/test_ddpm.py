"""DDPM model/guide: the full-chain ELBO, the closed-form decomposition and the time-plate
estimate agree; traces expose every term; objectives and variances train through SVI."""

from __future__ import annotations

import logging

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_gen.diffusion import (
    DDPM,
    NoiseSchedule,
    build_ddpm,
    ema_callback,
    linear_betas,
    variational_bound,
)
from pyro_gen.infer import fit
from pyro_gen.infer.compiled import CompiledSVI
from pyro_gen.nn.time_embedding import TimeMLP

torch.set_num_threads(1)


def tiny_ddpm(**kwargs) -> DDPM:
    torch.manual_seed(0)
    net = TimeMLP(2, 8, num_layers=1, out_dim=4 if kwargs.get("variance") == "learned_range" else 2)
    with torch.no_grad():
        net.out.weight.mul_(0.3)
    return DDPM(net, (2,), NoiseSchedule(linear_betas(8, 0.02, 0.5)), **kwargs)


def _estimates(m, loss, x, repeats):
    values = torch.tensor([loss.loss(m.model, m.guide, x) / x.shape[0] for _ in range(repeats)])
    return values.mean(), values.std() / repeats**0.5


def test_three_forms_of_the_bound_agree():
    m = tiny_ddpm(form="full_chain")
    x = (torch.randn(4, 2) * 0.7).repeat(200, 1)
    results = {"chain_trace": _estimates(m, Trace_ELBO(), x, 10)}
    results["chain_meanfield"] = _estimates(m, TraceMeanField_ELBO(), x, 10)
    closed = torch.stack([variational_bound(m, x)["total"].mean() for _ in range(10)])
    results["closed_form"] = (closed.mean(), closed.std() / 10**0.5)
    m.form = "time_plate"
    results["plate_k1"] = _estimates(m, TraceMeanField_ELBO(), x, 30)
    results["plate_trace_k1"] = _estimates(m, Trace_ELBO(), x, 30)
    m.time_samples = 8
    results["plate_all_t"] = _estimates(m, TraceMeanField_ELBO(), x, 10)
    ref_mean, ref_se = results["closed_form"]
    print({k: (round(float(a), 3), round(float(b), 3)) for k, (a, b) in results.items()})
    for name, (mean, se) in results.items():
        assert abs(mean - ref_mean) < 4 * (se**2 + ref_se**2).sqrt() + 1e-3, (name, results)


def test_closed_form_decomposition_is_exact_sum_of_terms():
    m = tiny_ddpm()
    x = torch.randn(16, 2)
    torch.manual_seed(3)
    out = variational_bound(m, x)
    assert out["terms"].shape == (16, 8)
    assert torch.allclose(out["total"], out["prior"] + out["terms"].sum(-1))
    assert bool((out["terms"][:, 1:] >= 0).all())  # KLs
    assert torch.allclose(out["bits_per_dim"], out["total"] / (2 * torch.log(torch.tensor(2.0))))


def test_a_float64_bound_keeps_its_terms_in_float64():
    m = tiny_ddpm().double()
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.manual_seed(3)
    out = variational_bound(m, x)
    torch.manual_seed(3)  # the same draws, one per step in order
    terms = torch.stack([m.step_term(x, t) for t in range(1, 9)], -1)
    assert out["terms"].dtype == torch.float64 and torch.equal(out["terms"], terms)


def test_trace_shows_every_term():
    m = tiny_ddpm(form="full_chain")
    x = torch.randn(3, 2)
    guide = poutine.trace(m.guide).get_trace(x)
    model = poutine.trace(poutine.replay(m.model, trace=guide)).get_trace(x)
    latents = [f"x_{t}" for t in range(8, 0, -1)]
    assert [n for n in guide.stochastic_nodes if n != "data"] == latents
    assert model.nodes["x_0"]["is_observed"]
    assert all(model.nodes[n]["fn"].batch_shape == (3,) for n in latents + ["x_0"])
    m.form = "time_plate"
    guide = poutine.trace(m.guide).get_trace(x)
    model = poutine.trace(poutine.replay(m.model, trace=guide)).get_trace(x)
    assert {"t", "x_8", "x_t", "x_prev", "x_0"} <= set(model.nodes)
    assert float(model.nodes["x_t"]["scale"]) == 8.0  # plate over T steps, one drawn


def test_model_without_data_is_the_generative_chain():
    m = tiny_ddpm()
    tr = poutine.trace(m.model).get_trace(None, num_samples=5)
    assert tr.nodes["x_0"]["value"].shape == (5, 2)
    assert not tr.nodes["x_0"]["is_observed"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"objective": "elbo", "param": "eps"},
        {"objective": "simple", "param": "v"},
        {"objective": "simple", "param": "x0", "variance": "learned_range"},
        {"objective": "elbo", "param": "score", "variance": "fixed_large"},
        {"objective": "elbo", "variance": "learned_range", "form": "full_chain"},
    ],
)
def test_svi_reduces_loss(kwargs):
    m = tiny_ddpm(**kwargs)
    x = torch.randn(128, 2) * 0.3 + 1.0
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-2}), TraceMeanField_ELBO())
    losses = [svi.step(x) for _ in range(40)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first


def test_trains_with_fit_and_ema():
    m = tiny_ddpm(ema_decay=0.9)
    x = torch.randn(256, 2) * 0.3 + 1.0
    fit(m, x, steps=30, batch_size=64, loss=TraceMeanField_ELBO(), progress=False,
        step_callbacks=[ema_callback])  # fmt: skip
    assert int(m.ema.num_updates) == 30  # exactly once per optimizer step
    before = m.net.out.weight.clone()
    with m.ema.average_parameters():
        assert not torch.equal(m.net.out.weight, before)
    assert torch.equal(m.net.out.weight, before)
    assert m.sample(7).shape == (7, 2)


def test_model_call_leaves_the_ema_alone():
    m = tiny_ddpm(ema_decay=0.9)
    for form in ("time_plate", "full_chain"):
        m.form = form
        TraceMeanField_ELBO().loss_and_grads(m.model, m.guide, torch.randn(8, 2))
    assert int(m.ema.num_updates) == 0
    m.update_ema()
    assert int(m.ema.num_updates) == 1
    with pytest.raises(ValueError, match="ema_decay"):
        tiny_ddpm().update_ema()
    with pytest.raises(ValueError, match="holds no EMA"):
        ema_callback(0, tiny_ddpm())


def test_compiled_step_records_the_time_plate_image_model_with_ema(caplog):
    # The EMA used to be updated inside model(), a side effect the compiled step cannot
    # record, so it fell back to plain Pyro SVI; now the update is a per-step callback.
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    # 5 x 5 pixels: a U-Net of one level, the smallest image network (recording an 8 x 8
    # one took twice as long, 11 s a recording, for nothing this test reads)
    m = build_ddpm((5, 5), timesteps=20, base_channels=8, num_bins=17, ema_decay=0.9)
    x = torch.randint(0, 17, (16, 5, 5)).float() / 16
    svi = CompiledSVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())
    start = m.ema.avg__out__weight.clone()
    for step in range(5):  # past the step-2 structure re-check
        svi.step(x)
        ema_callback(step, m)
    assert svi.fallback_reason is None and svi.compiled
    assert int(m.ema.num_updates) == 5
    assert not torch.equal(m.ema.avg__out__weight, start)
    # and fit, which builds the same compiled step, logs no fall-back either
    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        fit(m, x, steps=4, batch_size=8, loss=TraceMeanField_ELBO(), progress=False,
            step_callbacks=[ema_callback])  # fmt: skip
    assert not [r for r in caplog.records if "plain Pyro" in r.getMessage()]
    assert int(m.ema.num_updates) == 9


def test_image_model_bound_and_input_validation():
    m = build_ddpm((8, 8), timesteps=4, base_channels=8, num_bins=17)
    x = torch.randint(0, 17, (3, 8, 8)).float() / 16
    loss = TraceMeanField_ELBO().loss(m.model, m.guide, x)
    assert torch.isfinite(torch.tensor(loss))
    bound = variational_bound(m, x)
    assert bound["total"].shape == (3,)
    assert bool((bound["bits_per_dim"] > 0).all())  # discrete data: a code length
    assert m.sample(2, "ddim", steps=2).shape == (2, 8, 8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.model(x * 2)
    with pytest.raises(ValueError, match="shape"):
        m.model(torch.rand(3, 7, 7))
    with pytest.raises(ValueError, match="steps"):
        m.sample(2, "ddim", steps=5)
    with pytest.raises(ValueError, match="divisible"):
        build_ddpm((6, 6), timesteps=4, base_channels=8).net(torch.rand(1, 1, 5, 5), torch.ones(1))
    with pytest.raises(ValueError, match="param"):
        build_ddpm((2,), param="noise")


def test_discretized_gaussian_normalizes():
    from pyro_gen.diffusion import DiscretizedGaussian

    levels = torch.linspace(-1, 1, 256)
    for loc, scale in [(0.3, 0.01), (-0.99, 0.5), (2.0, 0.1), (0.001, 1e-3)]:
        d = DiscretizedGaussian(torch.tensor(loc), torch.tensor(scale))
        total = d.log_prob(levels).exp().sum()
        assert torch.allclose(total, torch.tensor(1.0), atol=1e-4), (loc, scale, total)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"objective": "simple"},
        {"objective": "simple", "param": "x0", "variance": "learned_range"},
        {"objective": "elbo"},
    ],
)
def test_time_plate_runs_under_an_outer_batch_dim(kwargs):
    # vectorized particles put a plate at dim -3 around model and guide; every site, the
    # L_simple factor included, must keep that dim and compute each particle on its own
    m = tiny_ddpm(time_samples=3, **kwargs)
    x = torch.randn(5, 2) * 0.3 + 1.0
    with pyro.plate("particles", 4, dim=-3):
        guide_tr = poutine.trace(m.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(m.model, trace=guide_tr)).get_trace(x)
    assert model_tr.nodes["x_t"]["value"].shape == (4, 3, 5, 2)
    if m.objective == "simple":
        factor = model_tr.nodes["L_simple"]["fn"].log_factor.detach()
        assert factor.shape == (4, 3, 5)
        # each particle's term is -|target - prediction|^2 / 2 of its own x_t, in the
        # network's parameterization (eps or x0)
        x_t = model_tr.nodes["x_t"]["value"]
        u = guide_tr.nodes["t"]["value"]
        idx = guide_tr.nodes["time"]["value"]
        t = m._plate_times(idx, u)
        ab = m.schedule.alphas_cumprod[t - 1].unsqueeze(-1)
        eps = (x_t - ab.sqrt() * x) / (1 - ab).sqrt()
        with torch.no_grad():
            p = m.p_mean_logvar(x_t, t)
        pred, target = (p["x0"], x) if m.param == "x0" else (p["eps"], eps)
        expected = -0.5 * (pred - target).pow(2).sum(-1)
        torch.testing.assert_close(factor, expected, atol=1e-4, rtol=1e-4)
    # and Pyro's vectorized particles estimate the same loss as a loop over particles
    torch.manual_seed(1)
    vec = Trace_ELBO(num_particles=100, vectorize_particles=True, max_plate_nesting=2)
    loop = torch.tensor([Trace_ELBO().loss(m.model, m.guide, x) for _ in range(60)])
    v = torch.tensor([vec.loss(m.model, m.guide, x) for _ in range(4)])
    se = (loop.var() / 60 + v.var() / 4).sqrt()
    assert abs(v.mean() - loop.mean()) < 4 * se + 1e-3, (v.mean(), loop.mean(), se)


def test_learned_variances_stay_between_the_bounds_and_fresh_samples_are_finite():
    """Whatever the network emits, log sigma_t^2 lies in [log beta~_t, log beta_t]; before the
    clamp, a fresh default DDPM's ancestral samples were NaN in 116 of 256 draws (its
    untrained variance output overflowed once the chain reached values of a few hundred)."""
    m = tiny_ddpm(variance="learned_range")
    s = m.schedule
    with torch.no_grad():
        m.net.out.bias.copy_(torch.tensor([0.0, 0.0, 50.0, -50.0]))  # v far outside [-1, 1]
        for t in range(1, s.num_timesteps + 1):
            log_var = m.p_mean_logvar(torch.randn(16, 2), t)["log_var"]
            low = s.posterior_log_variance_clipped[t - 1]
            high = s.betas[t - 1].log()
            assert torch.allclose(log_var[:, 1], low.expand(16)), t
            assert torch.allclose(log_var[:, 0], high.expand(16)), t
    torch.manual_seed(0)
    fresh = build_ddpm((2,), timesteps=100)
    assert fresh.variance == "learned_range"
    assert torch.isfinite(fresh.sample(256)).all()
