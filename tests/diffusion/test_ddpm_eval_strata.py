"""The time-plate DDPM in eval mode: one step per geometric stratum, each scaled by its length.

In training the plate draws ``time_samples`` uniform steps per example (scale T / k); in eval
mode (what ``fit`` and ``evaluate_elbo`` score held-out data in) it estimates the same bound
by stratified sampling. Checked here: the design itself read from the trace (every example
has one step in each stratum, scaled by the stratum's length, step 1 always), that the
estimate agrees with every term of the bound summed, that its spread is far below the
training draw's, and that training mode is untouched.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from pyro_gen.diffusion import build_ddpm, variational_bound
from pyro_gen.diffusion.likelihood import geometric_strata
from pyro_gen.infer import evaluate_elbo, fit


def _trace(m, x):
    guide = poutine.trace(m.guide).get_trace(x)
    return poutine.trace(poutine.replay(m.model, trace=guide)).get_trace(x), guide


@pytest.mark.parametrize("T", [1, 3, 60])
def test_eval_mode_draws_one_step_per_stratum_scaled_by_its_length(T):
    pyro.set_rng_seed(0)
    m = build_ddpm((2,), timesteps=T, hidden_dim=8).eval()
    x = torch.randn(7, 2)
    model_tr, guide_tr = _trace(m, x)
    edges = [1, *geometric_strata(2, T, min(m.eval_strata, T - 1)).tolist()] if T > 1 else [1, 2]
    first = torch.tensor(edges[:-1])[:, None]
    size = torch.tensor(edges[1:]) - torch.tensor(edges[:-1])
    t = m.schedule.num_timesteps  # the steps the sites saw: read back from the masks
    steps = guide_tr.nodes["t"]["value"]
    assert steps.shape == (len(size), 7)
    # each example's step in stratum k lies in [e_k, e_{k+1}): recover it from the model's mask
    x_prev = model_tr.nodes["x_prev"]
    assert x_prev["mask"][0].eq(False).all()  # stratum 0 is step 1 alone: L_0, never x_prev
    drawn = first + (steps * size[:, None]).long().clamp(max=size[:, None] - 1)
    assert (drawn >= first).all() and (drawn < first + size[:, None]).all() and drawn.max() <= t
    assert torch.equal(x_prev["mask"], (drawn > 1).expand_as(x_prev["mask"]))
    # scale: the plate's T / K times the stratum weight n_k K / T, i.e. n_k
    scale = torch.as_tensor(x_prev["scale"]).expand(len(size), 7)
    assert torch.allclose(scale, size[:, None].float().expand(-1, 7))
    assert model_tr.nodes["x_0"]["mask"][0].all() and not model_tr.nodes["x_0"]["mask"][1:].any()


def test_training_mode_is_unchanged_and_eval_strata_zero_keeps_the_training_draw():
    m = build_ddpm((2,), timesteps=50, hidden_dim=8, time_samples=3)
    x = torch.randn(5, 2)
    for mode in ("train", "eval_zero"):
        if mode == "eval_zero":
            m.eval().eval_strata = 0
        _, guide_tr = _trace(m, x)
        assert guide_tr.nodes["t"]["value"].shape == (5,)
        assert guide_tr.nodes["x_t"]["value"].shape == (3, 5, 2)
        assert guide_tr.nodes["x_prev"]["scale"] == pytest.approx(50 / 3)


def test_eval_estimate_agrees_with_the_whole_bound_at_a_fraction_of_the_spread():
    pyro.set_rng_seed(1)
    m = build_ddpm((2,), timesteps=200, hidden_dim=16)
    x = torch.randn(3000, 2) * 0.5
    whole = -variational_bound(m, x)["total"].double()
    strat = evaluate_elbo(m, x, loss=TraceMeanField_ELBO(), per_example=True)
    m.eval_strata = 0
    uniform = evaluate_elbo(m, x, loss=TraceMeanField_ELBO(), per_example=True)
    se = math.sqrt(whole.var() / len(x) + strat.var() / len(x))
    assert abs(strat.mean() - whole.mean()) < 4 * se, (strat.mean(), whole.mean(), se)
    # 5 passes for a spread several times below one uniform step's (86 against 10 here)
    assert strat.std() < uniform.std() / 5


def test_fit_reports_the_stratified_held_out_bound():
    pyro.set_rng_seed(2)
    m = build_ddpm((2,), timesteps=100, hidden_dim=16)
    x, held = torch.randn(512, 2) * 0.5, torch.randn(2000, 2) * 0.5
    loss = TraceMeanField_ELBO()  # closed-form KLs, as the DDPM trains
    history = fit(m, x, eval_data=held, loss=loss, epochs=1, batch_size=128, progress=False)
    reported = history.history[-1]["test_elbo"]
    whole = -variational_bound(m, held)["total"].double()
    strat = evaluate_elbo(m, held, loss=loss, per_example=True)  # what fit scored: its error
    se = math.sqrt(whole.var() / len(held) + strat.var() / len(held))
    assert abs(reported - whole.mean().item()) < 4 * se, (reported, whole.mean().item(), se)
    m.eval_strata = 0  # the training draw fit reported before: several times the error
    assert evaluate_elbo(m, held, loss=loss, per_example=True).std() > 3 * strat.std()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "16"])
def test_eval_strata_must_be_a_whole_number(bad):
    with pytest.raises(ValueError, match="eval_strata must be a whole number"):
        build_ddpm((2,), timesteps=10, hidden_dim=8, eval_strata=bad)
