"""fit on users' programs with unusual losses and values: a NaN gradient skips the update,
a callable loss (EnergyDistance) trains as in Pyro's SVI, an ELBO without a loss estimate is
refused, and structural -inf logits of a real param train as in Pyro."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.util
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_gen.infer import NonFiniteLossError, fit

LOC = torch.tensor([1.0, -2.0])


@pytest.mark.parametrize("compile", [None, False])
def test_a_nan_gradient_skips_the_update_and_names_the_step(compile):
    """A finite loss with a NaN gradient (sqrt at 0) must not reach the parameters."""
    w = torch.nn.Parameter(torch.tensor([1.0]))

    def model(x):
        pyro.module("w", torch.nn.ParameterList([w]))
        with pyro.plate("data", x.shape[0]):
            # d/dw sqrt(w^2 - 1) is inf at w = 1: a finite loss, a non-finite gradient
            pyro.sample("x", dist.Normal(torch.sqrt(w**2 - 1.0), 1.0), obs=x)

    pyro.enable_validation(False)
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        fit(model, torch.zeros(8), guide=lambda x: None, steps=3, batch_size=8, progress=False,
            compile=compile)  # fmt: skip
    assert w.item() == 1.0


def test_a_callable_loss_trains_as_in_pyros_svi_and_reports_a_test_loss():
    """EnergyDistance has no loss_and_grads; Pyro's SVI differentiates it, and so does fit."""
    from pyro.infer import EnergyDistance

    loc = torch.nn.Parameter(torch.zeros(2))

    def implicit(x):
        pyro.module("gen", torch.nn.ParameterList([loc]))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Delta(z + loc, event_dim=1), obs=x)

    data = torch.randn(256, 2) + LOC
    pyro.enable_validation(False)  # EnergyDistance warns that z has no guide site, by design
    result = fit(implicit, data, guide=lambda x: None, epochs=60, batch_size=64, progress=False,
                 loss=EnergyDistance(num_particles=4), optim=pyro.optim.Adam({"lr": 0.05}),
                 eval_data=data[:64])  # fmt: skip
    torch.testing.assert_close(loc.detach(), LOC, atol=0.25, rtol=0)
    assert "test_elbo" not in result.history[-1]
    assert math.isfinite(result.history[-1]["test_loss"])
    with pytest.raises(TypeError, match="loss must be a Pyro loss"):
        fit(implicit, data, guide=lambda x: None, epochs=1, loss=3.0, progress=False)


def test_an_elbo_without_a_loss_estimate_is_refused_clearly():
    # Pyro's TraceTailAdaptive_ELBO returns inf at every step by design; fit's guard would
    # take it for a divergence at step 0 and stop with a misleading error.
    from pyro.infer import TraceTailAdaptive_ELBO

    def model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    loss = TraceTailAdaptive_ELBO(num_particles=2, vectorize_particles=True)
    with pytest.raises(ValueError, match="TraceTailAdaptive_ELBO estimates no loss"):
        fit(model, torch.zeros(4), guide=AutoNormal(model), steps=1, loss=loss, progress=False)


def test_structural_minus_infinity_logits_of_a_real_param_train_as_in_pyro():
    """An unconstrained param may hold -inf on purpose (a transition that cannot happen):
    it is not refused, and fit takes Pyro's steps."""

    def model(y):
        logits = pyro.param("logits", torch.tensor([0.0, 0.0, -math.inf]))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    y = torch.tensor([0, 0, 1, 0])
    pyro.clear_param_store()
    fit(model, y, guide=lambda y: None, steps=5, batch_size=4, progress=False,
        optim=pyro.optim.Adam({"lr": 0.1}), compile=False)  # fmt: skip
    ours = pyro.param("logits").detach().clone()
    pyro.clear_param_store()
    svi = SVI(model, lambda y: None, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(5):
        svi.step(y)
    assert torch.equal(ours, pyro.param("logits").detach())
    assert ours[2] == -math.inf
