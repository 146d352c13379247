"""KL annealing the tutorial's way (``poutine.scale`` with a factor passed as an argument)
against ``fit(annealing=...)``, both against Pyro's SVI, with hand-written and flow guides,
with guides the user cannot put ``poutine.scale`` inside (autoguides, easyguides, a MAP
point) and with callable losses.

Programs and losses shared by the test_custom_objectives_*.py files live in
custom_objective_programs.py."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from pyro_gen.infer import LinearAnnealing, fit
from pyro_gen.vae import AutoAmortizedNormal
from tests.user_programs.custom_objective_programs import (
    LOSSES,
    W_PRIOR,
    X_DIM,
    B,
    N,
    _assert_same,
    _data,
    _easy,
    _easy_batches,
    _store,
    _svi_then_fit,
    _vae_program,
    global_model,
)

# ---------------------------------------------------------------------------------------
# KL annealing: the tutorial's poutine.scale argument against fit(annealing=...).

SCHEDULE = LinearAnnealing(warmup_steps=5, start=0.2)


def _annealing_batches() -> list[tuple]:
    x = _data()
    return [(x[i : i + B],) for i in range(0, N, B)]


# the compiled (default) step with the flow guide only: each compilation costs seconds
ANNEALING_CASES = [("hand", False), ("flow", False), ("flow", None)]


@pytest.mark.parametrize(
    "guide_kind,compile", ANNEALING_CASES, ids=[f"{g}-compile={c}" for g, c in ANNEALING_CASES]
)
def test_annealing_option_is_the_tutorials_scaled_sites(guide_kind, compile):
    """SVI stepping the tutorial's model and guide with annealing_factor=beta(step) takes
    the steps of fit(annealing=beta) on the same program (factor left at 1)."""
    batches = _annealing_batches()
    factors = [{"annealing_factor": SCHEDULE(t)} for t in range(2 * len(batches))]
    got, svi, store, expected = _svi_then_fit(
        lambda: _vae_program(guide_kind),
        batches,
        Trace_ELBO(),
        compile,
        svi_kwargs=factors,
        annealing=SCHEDULE,
    )
    _assert_same(got, svi, store, expected, exact=compile is False)


@pytest.mark.parametrize("compile", [False, None], ids=["compile=False", "default"])
def test_tutorial_annealing_factor_passed_with_each_batch(compile):
    """The tutorial's own way through fit: each batch carries its factor as a Python number
    (a dict of the batch's arguments), and fit steps as SVI does."""
    x = _data()
    batches = []
    for t, i in enumerate(list(range(0, N, B)) * 2):
        batches.append({"x": x[i : i + B], "annealing_factor": SCHEDULE(t)})
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = _vae_program("hand")
    pyro.set_rng_seed(1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), loss=Trace_ELBO())
    svi_losses = [svi.step(**b) / B for b in batches]
    expected = _store()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = _vae_program("hand")
    pyro.set_rng_seed(1)
    result = fit(
        model,
        batches,
        guide=guide,
        optim=pyro.optim.Adam({"lr": 0.02}),
        epochs=1,
        compile=compile,
        progress=False,
    )
    got = [result.history[0]["train_loss"]]
    _assert_same(got, [sum(svi_losses) / len(svi_losses)], _store(), expected, compile is False)


# ---------------------------------------------------------------------------------------
# Annealing with guides the user cannot put poutine.scale inside, and with callable losses.


def _scaled_global_model(x: torch.Tensor, idx: torch.Tensor, beta: float) -> None:
    """global_model with the tutorial's scale on every latent site."""
    with poutine.scale(scale=beta):
        w = pyro.sample("w", dist.Normal(torch.zeros(X_DIM), W_PRIOR).to_event(1))
    with pyro.plate("data", N, subsample=idx):
        with poutine.scale(scale=beta):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([X_DIM]).to_event(1))
        pyro.sample("x", dist.Normal(w + z, 1.0).to_event(1), obs=x)


def _global_guide(kind: str) -> Callable:
    if kind == "AutoMultivariateNormal":
        from pyro.infer.autoguide import AutoMultivariateNormal

        guide = AutoMultivariateNormal(global_model)
        guide(*_easy_batches()[0])
        return guide
    if kind == "AutoAmortizedNormal":
        guide = AutoAmortizedNormal(global_model, hidden_dims=(8,))
        guide(*_easy_batches()[0])
        return guide
    return _easy(kind)[1]


@pytest.mark.parametrize("kind", ["AutoMultivariateNormal", "AutoAmortizedNormal", "groups", "map"])
def test_annealing_option_with_auxiliary_guides_is_the_whole_guide_scaled(kind):
    """A guide with auxiliary draws (an autoguide, an easyguide's groups) or a MAP point is
    annealed the tutorial's way by scaling the whole guide, ``poutine.scale(guide, beta)``,
    and the model's latents: fit(annealing=beta) takes those steps bit for bit."""
    batches = _easy_batches()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = _global_guide(kind)
    pyro.set_rng_seed(1)

    def scaled_guide(x: torch.Tensor, idx: torch.Tensor, beta: float) -> None:
        poutine.scale(guide, scale=beta)(x, idx)

    svi = SVI(_scaled_global_model, scaled_guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for t, b in enumerate(batches * 2):
        svi.step(*b, SCHEDULE(t))
    expected = _store()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = _global_guide(kind)
    pyro.set_rng_seed(1)
    optim = pyro.optim.Adam({"lr": 0.02})
    fit(
        global_model,
        batches,
        guide=guide,
        optim=optim,
        epochs=2,
        annealing=SCHEDULE,
        compile=False,
        progress=False,
    )
    store = _store()
    assert sorted(store) == sorted(expected)
    for k in expected:
        assert torch.equal(store[k], expected[k]), k


@pytest.mark.parametrize("compile", [False, None], ids=["compile=False", "default"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_annealing_option_with_a_callable_loss(name, compile):
    """fit(annealing=beta, loss=callable) is SVI with that callable on the tutorial's scaled
    model and guide; train_loss is SVI's (annealed) loss per example."""
    got, svi, store, expected = _svi_then_fit(
        lambda: _vae_program("flow"),
        _annealing_batches(),
        LOSSES[name],
        compile,
        svi_kwargs=[{"annealing_factor": SCHEDULE(t)} for t in range(6)],
        annealing=SCHEDULE,
    )
    _assert_same(got, svi, store, expected, exact=compile is False)
