"""The data and the Pyro programs that more than one table of this package trains."""

from __future__ import annotations

from functools import partial

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import TraceEnum_ELBO

X4 = torch.tensor([0.5, 1.5, -0.3, 2.0])
X10 = torch.linspace(-1.0, 2.0, 10)
Y65 = torch.linspace(-1.0, 1.0, 30).reshape(6, 5)


def normal_guide(name: str, shape: tuple[int, ...] = ()) -> None:
    loc = pyro.param(f"{name}_loc", torch.zeros(shape))
    scale = pyro.param(f"{name}_scale", torch.ones(shape), constraint=constraints.positive)
    return pyro.sample(name, dist.Normal(loc, scale).to_event(len(shape)))


def plate_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def plate_guide(x):
    normal_guide("z")


def nested_model():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("groups", 6, dim=-2):
        g = pyro.sample("g", dist.Normal(mu, 1.0))
        with pyro.plate("items", 5, dim=-1):
            pyro.sample("y", dist.Normal(g, 0.5), obs=Y65)


def nested_guide():
    normal_guide("mu")
    with pyro.plate("groups", 6, dim=-2):
        loc = pyro.param("g_loc", torch.zeros(6, 1))
        pyro.sample("g", dist.Normal(loc, 0.7))


def nested_subsampled_model():
    # Pyro's test_nested_plate_plate_subsample_param_ok, with continuous sites
    with pyro.plate("outer", 5, subsample_size=3, dim=-1) as i:
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        with pyro.plate("inner", 6, subsample_size=2, dim=-2) as j:
            y = pyro.sample("y", dist.Normal(x, 1.0))
            pyro.sample("obs", dist.Normal(y, 0.5), obs=Y65[j][:, i])


def nested_subsampled_guide():
    with pyro.plate("outer", 5, subsample_size=3, dim=-1):
        px = pyro.param("px", torch.zeros(5), event_dim=0)
        pyro.sample("x", dist.Normal(px, 1.0))
        with pyro.plate("inner", 6, subsample_size=2, dim=-2):
            py = pyro.param("py", torch.zeros(6, 5), event_dim=0)
            pyro.sample("y", dist.Normal(py, 0.5))


def deterministic_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    d = pyro.deterministic("twice", 2.0 * z)
    pyro.sample("x", dist.Normal(d, 1.0), obs=torch.tensor(1.0))


def z_guide():
    normal_guide("z")


def map_model(x):
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc, scale), obs=x)


def map_guide(x):
    pyro.sample("loc", dist.Delta(pyro.param("loc_map", torch.tensor(0.3))))
    scale = pyro.param("scale_map", torch.tensor(1.2), constraint=constraints.positive)
    pyro.sample("scale", dist.Delta(scale))


def enum_guide_model(x):
    locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
    with pyro.plate("data", len(x)):
        c = pyro.sample("c", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(locs[c.long()], 1.0), obs=x)


def enum_guide_guide(x):
    with pyro.plate("data", len(x)):
        p = pyro.param("c_p", torch.full((len(x),), 0.5), constraint=constraints.unit_interval)
        pyro.sample("c", dist.Bernoulli(p))


def mixture_model(x):
    weights = pyro.param("weights", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
    with pyro.plate("data", len(x)):
        k = pyro.sample("k", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[k], scale), obs=x)


def mixture_guide(x):
    loc = pyro.param("scale_loc", torch.tensor(0.0))
    pyro.sample("scale", dist.LogNormal(loc, 0.3))


def mixture_map_guide(x):
    scale = pyro.param("scale_map", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("scale", dist.Delta(scale))


def empty_guide(*args, **kwargs):
    pass


X_BATCH = [(X4,)]


ENUM_LOSS = partial(TraceEnum_ELBO, max_plate_nesting=1)
