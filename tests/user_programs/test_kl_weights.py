"""KL weights that are no weight: a schedule that returns a negative number, NaN or nothing
(a ``def schedule(step): min(1.0, step / 100)`` without ``return``), and ``kl_scale``
given one. A negative weight trained silently (``fit`` recorded ``beta: -0.5``), NaN was
reported as a non-finite loss with advice to lower the learning rate, None failed inside
``float()`` or Pyro's scale handling without naming the schedule."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_gen.infer import LinearAnnealing, fit, kl_scale

X = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))


def model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def guide(x: torch.Tensor) -> None:
    shift = pyro.param("shift", torch.zeros(2))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2 + shift, 0.7).to_event(1))


def _no_return(step: int) -> None:
    min(1.0, step / 100)


@pytest.mark.parametrize(
    ("schedule", "error", "said"),
    [
        (lambda step: -0.5, ValueError, r"annealing returned -0\.5 at step 0"),
        (lambda step: math.nan, ValueError, r"annealing returned nan at step 0"),
        (_no_return, TypeError, r"annealing returned None at step 0"),
    ],
    ids=["negative", "nan", "none"],
)
def test_a_schedule_that_gives_no_weight_is_named_at_its_step(schedule, error, said):
    pyro.clear_param_store()
    with pytest.raises(error, match=said + r".*a finite number >= 0"):
        fit(model, X, guide=guide, steps=2, annealing=schedule, progress=False)


@pytest.mark.parametrize("compile", [False, None])
def test_a_schedule_gone_wrong_later_is_named_at_that_step(compile):
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"annealing returned -1\.0 at step 2"):
        fit(
            model,
            X,
            guide=guide,
            steps=4,
            batch_size=3,
            annealing=lambda step: 1.0 if step < 2 else -1.0,
            compile=compile,
            progress=False,
        )


@pytest.mark.parametrize(
    ("beta", "error"), [(-1.0, ValueError), (math.inf, ValueError), (None, TypeError)]
)
def test_kl_scale_refuses_what_is_no_weight(beta, error):
    with pytest.raises(error, match=r"kl_scale: beta .* a finite number >= 0"):
        kl_scale(model, beta)


def test_kl_scale_checks_what_its_callable_returns_at_each_run():
    pyro.clear_param_store()
    weight = [1.0]
    svi = SVI(
        kl_scale(model, lambda: weight[0]),
        kl_scale(guide, lambda: weight[0]),
        pyro.optim.Adam({"lr": 0.01}),
        Trace_ELBO(),
    )
    svi.step(X)
    weight[0] = -2.0
    with pytest.raises(ValueError, match=r"kl_scale: beta\(\) returned -2\.0"):
        svi.step(X)


def test_weights_in_range_still_train():
    pyro.clear_param_store()
    result = fit(model, X, guide=guide, steps=3, annealing=LinearAnnealing(2), progress=False)
    assert [r["beta"] for r in result.history] == [0.0, 0.5, 1.0]
    pyro.clear_param_store()
    SVI(kl_scale(model, 0.0), kl_scale(guide, 0.0), pyro.optim.Adam({}), Trace_ELBO()).step(X)
