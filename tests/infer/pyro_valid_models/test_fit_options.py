"""fit's options in plain Pyro programs: step callbacks, a loss the compiled step does not
support, KL annealing beside enumeration, held-out evaluation by a named plate."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceGraph_ELBO

from pyro_gen.infer import evaluate_elbo, fit

from .case import SEED, STEPS, sgd
from .programs import ENUM_LOSS, X4, X10, deterministic_model, mixture_guide, mixture_model, z_guide
from .runner import logged_path, param_values

BETA = [1.0]


def annealed_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with poutine.scale(scale=BETA[0]):  # a likelihood weight that a step callback anneals
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(2.0))


def _anneal(step: int, model: Any = None) -> None:
    BETA[0] = 1.0 if step < 5 else 10.0  # from the sixth step on (step: steps taken so far)


def test_a_value_a_step_callback_changes_reaches_the_model(caplog):
    """``step_callbacks`` are fit's place for updates that follow the optimizer; one that
    changes what the model reads must change the next step, as in Pyro's loop."""
    steps = 8
    runs = []
    for use_fit in (True, False):
        BETA[0] = 1.0
        pyro.clear_param_store()
        pyro.set_rng_seed(SEED)
        if use_fit:
            fit(annealed_model, (), guide=z_guide, steps=steps, optim=sgd(), progress=False,
                step_callbacks=[_anneal])  # fmt: skip
        else:
            svi = SVI(annealed_model, z_guide, sgd(), Trace_ELBO())
            for step in range(steps):
                svi.step()
                _anneal(step + 1)
        runs.append(param_values())
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", [TraceGraph_ELBO, lambda: RenyiELBO(num_particles=2)],
                         ids=["TraceGraph_ELBO", "RenyiELBO"])  # fmt: skip
def test_a_loss_the_compiled_step_does_not_support_says_so(loss, caplog):
    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        fit(deterministic_model, (), guide=z_guide, loss=loss(), steps=1, optim=sgd(),
            progress=False)  # fmt: skip
    assert re.search("not supported", logged_path(caplog)), logged_path(caplog)


def _annealed_mixture(beta: list[float]) -> tuple[Callable, Callable]:
    """mixture_model and its guide with the continuous latent's KL scaled by ``beta[0]``,
    the enumerated assignment left alone (what KL annealing means for this model)."""

    def model(x):
        weights = pyro.param("weights", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
        with poutine.scale(scale=beta[0]):
            scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        with pyro.plate("data", len(x)):
            k = pyro.sample("k", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[k], scale), obs=x)

    def guide(x):
        with poutine.scale(scale=beta[0]):
            mixture_guide(x)

    return model, guide


def test_kl_annealing_leaves_sites_enumerated_in_the_model_alone():
    from pyro_gen.infer import LinearAnnealing

    schedule = LinearAnnealing(10, start=0.5)  # poutine.scale takes no 0 in the reference
    pyro.set_rng_seed(SEED)
    fit(mixture_model, [(X4,)], guide=mixture_guide, loss=ENUM_LOSS(), steps=STEPS,
        annealing=schedule, optim=sgd(), progress=False)  # fmt: skip
    ours = param_values()
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    beta = [0.0]
    svi = SVI(*_annealed_mixture(beta), sgd(), ENUM_LOSS())
    for step in range(STEPS):
        beta[0] = schedule(step)
        svi.step(X4)
    torch.testing.assert_close(ours, param_values(), rtol=1e-5, atol=1e-6)


def anchored_model(x):
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    pyro.sample("anchor", dist.Normal(loc, 0.1), obs=torch.tensor(1.0))  # a global observation
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)


def anchored_guide(x):
    pyro.sample("loc", dist.Delta(pyro.param("loc_map", torch.tensor(0.0))))


@pytest.mark.filterwarnings("ignore:guide sites .* are point masses")
def test_fit_evaluates_a_model_with_a_global_observation_given_the_plate_name():
    result = fit(anchored_model, X10, guide=anchored_guide, epochs=1, batch_size=5,
                 eval_data=X10, plate_name="data", optim=sgd(), progress=False)  # fmt: skip
    expected = evaluate_elbo(anchored_model, X10, guide=anchored_guide, plate_name="data")
    assert result.history[-1]["test_elbo"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.filterwarnings("ignore:guide sites .* are point masses")
def test_held_out_data_fit_cannot_score_is_refused_before_training():
    loc = pyro.param("loc_map", torch.tensor(0.0)).detach().clone()
    with pytest.raises(ValueError, match="plate_name="):
        fit(anchored_model, X10, guide=anchored_guide, epochs=1, batch_size=5,
            eval_data=X10, optim=sgd(), progress=False)  # fmt: skip
    assert torch.equal(pyro.param("loc_map").detach(), loc)  # no step was taken
