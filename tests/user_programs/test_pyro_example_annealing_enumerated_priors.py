"""KL annealing (fit's ``annealing``, ``kl_scale_pair``) of a latent whose prior is a sum over
a site the model enumerates: a latent that shares a sum with an observation is left unscaled
(and named), scANVI's mixture prior is annealed as a whole and right from the first call, and
an annealed compiled run resumes exactly.

Issue 10, continued with Pyro's examples that lean on other inference machinery: what
this group shares is said once in ``tests/user_programs/__init__.py``.
"""

from __future__ import annotations

import functools
import logging

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate

from pyro_gen.infer import LinearAnnealing, fit
from pyro_gen.infer.annealing import kl_scale_pair
from pyro_gen.vae import AutoAmortizedNormal
from tests.user_programs import scanvi
from tests.user_programs.pyro_example_checks import (
    _cells_plate,
    _log_counts,
    _scanvi_loss,
    pyro_gen_lines,
)
from tests.user_programs.test_user_programs import _store, assert_same_store, resumed_and_straight


def test_annealing_leaves_a_latent_that_shares_a_sum_with_an_observation_unscaled():
    """``x`` depends on the enumerated ``c`` and on ``z``, which depends on ``c`` too: the
    sum over ``c`` is likelihood and prior at once, and TraceEnum_ELBO puts one scale outside
    it, so ``z`` keeps its scale (in model and guide, from the model's first run on) and
    the user is told which latent is not annealed."""
    locs = torch.tensor([-2.0, 2.0])

    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample(
                "c", dist.Categorical(logits=torch.zeros(2)), infer={"enumerate": "parallel"}
            )
            z = pyro.sample("z", dist.Normal(locs[c], 1.0))
            pyro.sample("x", dist.Normal(z + locs[c], 0.5), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x / 2, 0.7))

    x = torch.tensor([-4.1, 0.3, 3.9])
    loss = TraceEnum_ELBO(max_plate_nesting=1)
    annealed = kl_scale_pair(model, guide, 0.3)
    with pytest.warns(UserWarning, match=r"\['z'\] unscaled"):
        loss.loss(*annealed, x)  # the model's first run tells the sum apart
    pyro.set_rng_seed(0)
    expected = loss.loss(model, guide, x)
    pyro.set_rng_seed(0)
    assert loss.loss(*annealed, x) == expected


def test_an_annealed_compiled_run_resumes_exactly(tmp_path):
    """Resumed, each input signature's first step is Pyro's plain step again, where the
    straight run replays its program: with a KL-annealing schedule the two rounded the
    scaled log-densities differently (beta a float32 input against Pyro's double), 4e-7
    apart after 4 epochs; now the same bits."""
    data = scanvi.cells()

    def run(directory, epochs):
        pyro.clear_param_store()
        m = scanvi.SCANVI()
        fit(
            m.model,
            lambda: scanvi.epoch(data),
            guide=config_enumerate(m.guide, "parallel", expand=True),
            epochs=epochs,
            optim=pyro.optim.Adam({"lr": 1e-2}),
            loss=_scanvi_loss(),
            annealing=LinearAnnealing(warmup_steps=20),
            checkpoint_dir=directory,
            progress=False,
        )
        return _store()

    assert_same_store(*resumed_and_straight(run, tmp_path, 4, 2), exact=True)


@pytest.mark.parametrize("compile", [False, None], ids=["plain", "default"])
def test_annealing_a_latent_under_an_enumerated_mixture_prior(compile, caplog):
    """With the autoguide leaving the cell type to the model's enumeration, scANVI's z2 has
    the prior ``sum_y p(y) p(z2 | z1, y)``. fit's ``annealing`` scales that whole sum with
    z2 (the beta-KL of a mixture prior; TraceEnum_ELBO takes one scale outside a sum, and
    refused the pair before), so fit takes the steps of the user's loop annealing by hand
    as Pyro's DMM example does (``poutine.scale`` on the model's latents and on the guide),
    from the first step on; the default step records it with beta an input of the program,
    without falling back."""
    data = scanvi.cells()
    schedule = LinearAnnealing(warmup_steps=10, start=0.2)

    def run(train):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        m = scanvi.SCANVI()
        model = config_enumerate(m.model, "parallel")
        guide = AutoAmortizedNormal(
            model, hidden_dims=(8,), input_fn=_log_counts, create_plates=_cells_plate
        )
        guide(**next(scanvi.epoch(data)))  # its parameters first, as fit's checking trace
        train(model, guide, pyro.optim.SGD({"lr": 1e-4}))
        return _store()

    def by_hand(model, guide, optim):
        step = 0
        for _ in range(2):
            for batch in scanvi.epoch(data):
                beta = schedule(step)
                svi = SVI(
                    functools.partial(model, annealing_factor=beta),
                    poutine.scale(guide, scale=beta),
                    optim,
                    _scanvi_loss(),
                )
                svi.step(**batch)
                step += 1

    expected = run(by_hand)
    with caplog.at_level(logging.WARNING, logger="pyro_gen"):
        got = run(
            lambda model, guide, optim: fit(
                model,
                lambda: scanvi.epoch(data),
                guide=guide,
                epochs=2,
                optim=optim,
                loss=_scanvi_loss(),
                annealing=schedule,
                compile=compile,
                progress=False,
            )
        )
    assert_same_store(got, expected, exact=compile is False)
    assert pyro_gen_lines(caplog) == []


@pytest.mark.parametrize("vectorize", [False, True], ids=["particles in turn", "vectorized"])
def test_annealing_a_mixture_prior_is_right_from_the_first_call(vectorize):
    """The first call tells the sum over ``c`` apart (only the latent ``z`` depends on it:
    a mixture prior, scaled whole) and its scales are set when the model's run ends; under
    a vectorized particle plate, which multiplies the scales after the wrapper, too."""
    locs = torch.tensor([-2.0, 2.0])

    def model(x, beta=1.0):
        with pyro.plate("data", len(x)):
            with poutine.scale(scale=beta):  # the annealing a user writes by hand
                c = pyro.sample(
                    "c", dist.Categorical(logits=torch.zeros(2)), infer={"enumerate": "parallel"}
                )
                z = pyro.sample("z", dist.Normal(locs[c], 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x, beta=1.0):
        with pyro.plate("data", len(x)), poutine.scale(scale=beta):
            pyro.sample("z", dist.Normal(x, 0.7))

    x = torch.tensor([-2.1, 0.3, 1.9])
    loss = TraceEnum_ELBO(max_plate_nesting=1, num_particles=3, vectorize_particles=vectorize)
    pyro.set_rng_seed(0)
    expected = loss.loss(model, guide, x, beta=0.3)
    annealed = kl_scale_pair(model, guide, 0.3)
    for _ in range(2):
        pyro.set_rng_seed(0)
        assert loss.loss(*annealed, x) == expected
