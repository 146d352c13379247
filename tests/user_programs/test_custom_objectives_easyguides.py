"""``pyro.contrib.easyguide`` guides (``group``, ``plate``, ``map_estimate``) through
pyro_gen's ``fit`` against Pyro's SVI, and through the evaluation helpers against Pyro's
``Trace_ELBO``; a point mass beside auxiliary draws in an ``AutoGuideList``.

Programs and losses shared by the test_custom_objectives_*.py files live in
custom_objective_programs.py."""

from __future__ import annotations

import math

import pyro
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from tests.user_programs.custom_objective_programs import (
    B,
    N,
    _assert_same,
    _data,
    _easy,
    _easy_batches,
    _svi_then_fit,
    global_model,
)

EASY_CASES = [("map", False), ("groups", False), ("groups", None)]


@pytest.mark.parametrize(
    "kind,compile", EASY_CASES, ids=[f"{k}-compile={c}" for k, c in EASY_CASES]
)
def test_easyguide_fit_is_pyro_svi(kind, compile):
    """An EasyGuide with map_estimate, group and plate (subsampled): SVI's steps. The data
    plate subsamples, so Pyro's loss is scaled to the N examples: per example is /N."""
    batches = _easy_batches()
    got, svi, store, expected = _svi_then_fit(lambda: _easy(kind), batches, Trace_ELBO(), compile)
    svi = [v * B / N for v in svi]  # _svi_then_fit divides by the batch's B
    _assert_same(got, svi, store, expected, exact=compile is False)


def test_easyguide_bounds():
    """Evaluation of easyguides: with map_estimate, evaluate_elbo warns about the point
    mass and is -Trace_ELBO / N (Pyro's, many particles) while iwae refuses naming w; with
    Normal groups both are finite, the ELBO is Pyro's and IWAE is not below it."""
    x, idx = _data(), torch.arange(N)
    for kind in ("map", "groups"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model, guide = _easy(kind)
        fit(model, _easy_batches(), guide=guide, epochs=3, compile=False, progress=False)
        pyro.set_rng_seed(3)
        elbo_pyro = Trace_ELBO(num_particles=2000, vectorize_particles=True)
        reference = -elbo_pyro.loss(model, guide, x, idx) / N
        if kind == "map":
            with pytest.warns(UserWarning, match="w"):
                elbo = evaluate_elbo(model, (x, idx), guide=guide, num_particles=2000)
            with pytest.raises(ValueError, match="'w'"):
                iwae_log_likelihood(model, (x, idx), guide=guide, num_samples=8)
        else:
            elbo = evaluate_elbo(model, (x, idx), guide=guide, num_particles=2000)
            iwae = iwae_log_likelihood(model, (x, idx), guide=guide, num_samples=200)
            assert math.isfinite(iwae) and iwae > elbo - 0.05
        assert elbo == pytest.approx(reference, abs=0.05), kind


def test_point_mass_beside_auxiliary_draws_in_a_guide_list():
    """AutoGuideList([AutoDelta on w, AutoMultivariateNormal on z]): the same mix of a point
    mass and Deltas fed by an auxiliary draw. IWAE refuses naming w alone; evaluate_elbo
    warns naming it; the Deltas of the MVN's draw are not called point masses."""
    from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoMultivariateNormal

    x, idx = _data(), torch.arange(N)
    pyro.clear_param_store()
    guide = AutoGuideList(global_model)
    guide.append(AutoDelta(poutine.block(global_model, expose=["w"])))
    guide.append(AutoMultivariateNormal(poutine.block(global_model, expose=["z"])))
    guide(x, idx)
    with pytest.raises(ValueError, match=r"guide sites \['w'\] are point masses"):
        iwae_log_likelihood(global_model, (x, idx), guide=guide, num_samples=8)
    with pytest.warns(UserWarning, match=r"guide sites \['w'\] are point masses"):
        evaluate_elbo(global_model, (x, idx), guide=guide)
