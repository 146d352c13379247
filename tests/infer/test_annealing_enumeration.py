"""KL annealing with enumerated discrete sites: a label the guide enumerates is a KL term and
scaled on both sides, even when the model is wrapped in ``config_enumerate`` too (Pyro's
semi-supervised VAE tutorial enumerates the guide; users often mark the model as well)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from torch.distributions import constraints

from pyro_gen.infer import LinearAnnealing, fit

X = torch.tensor([0.5, 1.5, -0.3, 2.0])
STEPS = 4


@config_enumerate
def model(x, beta=1.0):
    with pyro.plate("data", len(x)), poutine.scale(scale=beta):
        y = pyro.sample("y", dist.Bernoulli(0.5))
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data_obs", len(x), dim=-1):
        pyro.sample("x", dist.Normal(z + 2 * y, 1.0), obs=x)


@config_enumerate
def guide(x, beta=1.0):
    p = pyro.param("p", torch.full((len(x),), 0.5), constraint=constraints.unit_interval)
    loc = pyro.param("loc", torch.zeros(len(x)))
    with pyro.plate("data", len(x)), poutine.scale(scale=beta):
        y = pyro.sample("y", dist.Bernoulli(p))
        pyro.sample("z", dist.Normal(loc + y, 1.0))


def test_a_label_both_sides_enumerate_is_scaled_in_model_and_guide():
    schedule = LinearAnnealing(10, start=0.5)  # poutine.scale in the reference takes no 0
    optim = pyro.optim.SGD({"lr": 0.05})
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    fit(model, [(X,)], guide=guide, loss=TraceEnum_ELBO(max_plate_nesting=1), steps=STEPS,
        annealing=schedule, optim=optim, progress=False)  # fmt: skip
    ours = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 0.05}), TraceEnum_ELBO(max_plate_nesting=1))
    for step in range(STEPS):
        svi.step(X, beta=schedule(step))
    theirs = {k: v.detach() for k, v in pyro.get_param_store().items()}
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)
