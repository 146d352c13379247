"""fit against Pyro's own SVI on the model/guide patterns of Pyro's test_valid_models.py.

Each row of the table is a model and guide written in plain Pyro (plates nested, non-nested,
subsampled by size and by the user's indices, sequential plates, ``poutine.scale`` and
``poutine.mask``, ``obs_mask``, ``pyro.factor``, ``pyro.deterministic``, site sets that
change between steps, Delta, reparameterized and score-function guide sites, enumeration in
guide and model, several ELBOs and particle settings, constrained params, no observed site,
``pyro.module`` networks, Pyro's autoguides). Each is trained for a few steps by ``fit`` on
its default path, which records the step into a compiled program, and by a hand-written
``SVI`` loop from the same seed and the same (empty) param store. After every step the
parameters must be Pyro's, modules' buffers too, and the losses ``fit`` reports must be the
losses ``SVI.step`` returned. Plain SGD is the main optimizer because its update is linear
in the gradient (Adam's first steps are invariant to a rescaled gradient, so they would hide
a missing scale); a few rows train with Adam, ``fit``'s fused update.

Each row also states the path the step must take, read from the ``"pyro_gen"`` log: recorded
and kept (then the recorded program must have taken every step after each signature's
first), or back to plain Pyro SVI with the logged reason. A fallback is fine when it says
why; a parameter that differs from Pyro's is a defect. Defects found this way are the
``xfail(strict=True)`` tests after the table, each reason saying where the fault lies.

A second table checks ``evaluate_elbo`` against ``loss.loss`` and closed forms where both
estimate the same number without noise (Delta guides, enumerated sites, an exact posterior).
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from unittest import mock

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.util
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import (
    SVI,
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    config_enumerate,
)
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiscreteParallel,
    AutoGuideList,
    AutoNormal,
)
from pyro.infer.reparam import LocScaleReparam
from torch.distributions import kl_divergence

from pyro_gen.infer import changes_only_tensors, evaluate_elbo, fit
from pyro_gen.infer.compiled import CompiledSVI

SEED = 3
STEPS = 3
COMPILED = "compiled"  # the row's step is recorded and stays recorded
# fit chose plain Pyro SVI without a log line (a loss the program does not support)
PLAIN_UNSAID = "plain Pyro SVI, no log line"

X4 = torch.tensor([0.5, 1.5, -0.3, 2.0])
X10 = torch.linspace(-1.0, 2.0, 10)
Y65 = torch.linspace(-1.0, 1.0, 30).reshape(6, 5)


def sgd() -> pyro.optim.PyroOptim:
    return pyro.optim.SGD({"lr": 0.05})


def adam() -> pyro.optim.PyroOptim:
    return pyro.optim.Adam({"lr": 0.05})


@dataclass(frozen=True)
class Case:
    """A model/guide pair, its loss, the batches of its steps and the path its step takes.

    ``batches`` None calls ``model()`` at every step (``fit(..., data=())``); otherwise the
    steps take the batches in turn, a tuple positionally and a dict by name. ``path`` is
    ``COMPILED`` or a regular expression the fallback's logged reason must match.
    """

    id: str
    model: Callable[..., Any]
    guide: Callable[..., Any]
    loss: Callable[[], Any]
    path: str
    batches: list[Any] | None = None
    optim: Callable[[], pyro.optim.PyroOptim] = sgd
    steps: int = STEPS
    # distinct input signatures: each runs one plain step, then the recorded program
    signatures: int = 1
    # modules the pair closes over: put back before each run, their state (batch norm's
    # running statistics included) compared after it
    modules: tuple[torch.nn.Module, ...] = ()
    marks: tuple[Any, ...] = field(default_factory=tuple)


def _normal_guide(name: str, shape: tuple[int, ...] = ()) -> None:
    loc = pyro.param(f"{name}_loc", torch.zeros(shape))
    scale = pyro.param(f"{name}_scale", torch.ones(shape), constraint=constraints.positive)
    return pyro.sample(name, dist.Normal(loc, scale).to_event(len(shape)))


# --- plates ----------------------------------------------------------------------------


def plate_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def plate_guide(x):
    _normal_guide("z")


def subsample_size_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 10, subsample_size=4) as ind:
        w = pyro.sample("w", dist.Normal(z, 1.0))
        pyro.sample("x", dist.Normal(w, 0.5), obs=X10[ind])


def subsample_size_guide():
    _normal_guide("z")
    with pyro.plate("data", 10, subsample_size=4):
        # a local param of the full size, subsampled by the plate (Pyro's event_dim idiom)
        loc = pyro.param("w_loc", torch.zeros(10), event_dim=0)
        pyro.sample("w", dist.Normal(loc, 0.5))


def user_subsample_model(idx):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 10, subsample=idx):
        w = pyro.sample("w", dist.Normal(z, 1.0))
        pyro.sample("x", dist.Normal(w, 0.5), obs=X10[idx])


def user_subsample_guide(idx):
    _normal_guide("z")
    with pyro.plate("data", 10, subsample=idx):
        loc = pyro.param("w_loc", torch.zeros(10), event_dim=0)
        pyro.sample("w", dist.Normal(loc, 0.5))


USER_INDICES = [(torch.tensor([0, 3, 7]),), (torch.tensor([9, 1, 2]),), (torch.tensor([5, 4, 8]),)]


def nested_model():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("groups", 6, dim=-2):
        g = pyro.sample("g", dist.Normal(mu, 1.0))
        with pyro.plate("items", 5, dim=-1):
            pyro.sample("y", dist.Normal(g, 0.5), obs=Y65)


def nested_guide():
    _normal_guide("mu")
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


def nonnested_model():
    with pyro.plate("p0", 10, subsample_size=5) as i:
        pyro.sample("a", dist.Normal(0.0, 1.0).expand([5]))
        pyro.sample("xa", dist.Normal(0.0, 1.0), obs=X10[i])
    with pyro.plate("p1", 4) as j:
        b = pyro.sample("b", dist.Normal(1.0, 1.0).expand([4]))
        pyro.sample("xb", dist.Normal(b, 1.0), obs=X4[j])


def nonnested_guide():
    with pyro.plate("p0", 10, subsample_size=5):
        pyro.sample("a", dist.Normal(pyro.param("a_loc", torch.zeros(10), event_dim=0), 1.0))
    with pyro.plate("p1", 4):
        pyro.sample("b", dist.Normal(pyro.param("b_loc", torch.zeros(4)), 1.0))


def plate_stack_model():
    with pyro.plate_stack("stack", (3, 2)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.ones(3, 2))


def plate_stack_guide():
    with pyro.plate_stack("stack", (3, 2)):
        pyro.sample("z", dist.Normal(pyro.param("z_loc", torch.zeros(3, 2)), 1.0))


def iplate_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    for i in pyro.plate("seq", 3):
        w = pyro.sample(f"w_{i}", dist.Normal(z, 1.0))
        pyro.sample(f"x_{i}", dist.Normal(w, 1.0), obs=X4[i])


def iplate_guide():
    _normal_guide("z")
    for i in pyro.plate("seq", 3):
        pyro.sample(f"w_{i}", dist.Normal(pyro.param(f"w_{i}_loc", torch.tensor(0.0)), 1.0))


def iplate_subsample_model():
    # which sites exist is drawn at each step: the subsample of a sequential plate
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    for i in pyro.plate("seq", 10, subsample_size=2):
        pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=X10[i])


def iplate_subsample_guide():
    _normal_guide("z")
    for _ in pyro.plate("seq", 10, subsample_size=2):
        pass


def varying_length_model(x):
    # one site per element: the site set follows the batch
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    for t in range(len(x)):
        pyro.sample(f"x_{t}", dist.Normal(z, 1.0), obs=x[t])


def varying_length_guide(x):
    _normal_guide("z")


VARYING_LENGTHS = [(X4[:2],), (X4[:3],), (X4,)]


def branching_model():
    # the observed site depends on the sign of a latent draw
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    if z > 0:
        pyro.sample("pos", dist.Normal(z, 1.0), obs=torch.tensor(1.0))
    else:
        pyro.sample("neg", dist.Normal(2.0 * z, 1.0), obs=torch.tensor(-1.0))


# --- scale, mask, obs_mask, factor, deterministic -----------------------------------------


def scale_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with poutine.scale(scale=0.1):
        pyro.sample("a", dist.Normal(z, 1.0), obs=torch.tensor(2.0))
    with pyro.plate("data", 2), poutine.scale(scale=torch.tensor([0.3, 3.0])):
        w = pyro.sample("w", dist.Normal(z, 1.0))
        pyro.sample("x", dist.Normal(w, 1.0), obs=torch.tensor([1.0, -1.0]))


def scale_guide():
    _normal_guide("z")
    with pyro.plate("data", 2), poutine.scale(scale=torch.tensor([0.3, 3.0])):
        pyro.sample("w", dist.Normal(pyro.param("w_loc", torch.zeros(2)), 1.0))


MASK = torch.tensor([False, True, True])


def mask_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    u = pyro.sample("u", dist.Normal(0.0, 1.0).mask(False))  # Pyro's test_mean_field_mask_ok
    with poutine.mask(mask=False):
        pyro.sample("a", dist.Normal(z, 1.0), obs=torch.tensor(5.0))
    with pyro.plate("data", 3), poutine.mask(mask=MASK):
        pyro.sample("x", dist.Normal(z + u, 1.0), obs=torch.tensor([9.0, 1.0, -1.0]))


def mask_guide():
    _normal_guide("z")
    pyro.sample("u", dist.Normal(pyro.param("u_loc", torch.tensor(0.5)), 1.0).mask(False))


OBS_MASK = torch.tensor([False, True, False])


def obs_mask_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    with pyro.plate("plate", 3):
        pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor([7.0, 7.0, 7.0]), obs_mask=OBS_MASK)


def obs_mask_guide():
    x = _normal_guide("x")
    with pyro.plate("plate", 3), poutine.mask(mask=~OBS_MASK):
        pyro.sample("y_unobserved", dist.Normal(x, 1.0))


def obs_mask_mvn_model():
    x = pyro.sample("x", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
    with pyro.plate("plate", 3):
        pyro.sample(
            "y", dist.MultivariateNormal(x, torch.eye(2)), obs=torch.full((3, 2), 7.0),
            obs_mask=OBS_MASK,
        )  # fmt: skip


def obs_mask_mvn_guide():
    loc = pyro.param("loc", torch.zeros(2))
    tril = pyro.param("tril", torch.eye(2), constraint=constraints.lower_cholesky)
    x = pyro.sample("x", dist.MultivariateNormal(loc, scale_tril=tril))
    with pyro.plate("plate", 3), poutine.mask(mask=~OBS_MASK):
        pyro.sample("y_unobserved", dist.MultivariateNormal(x, torch.eye(2)))


def factor_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.factor("soft_constraint", -2.0 * (z - 1.0) ** 2)
    c = pyro.param("c", torch.tensor(0.5))
    pyro.factor("param_factor", -(c**2) * z.exp())


def deterministic_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    d = pyro.deterministic("twice", 2.0 * z)
    pyro.sample("x", dist.Normal(d, 1.0), obs=torch.tensor(1.0))


def z_guide():
    _normal_guide("z")


# --- Delta, score-function and constrained sites ------------------------------------------


def map_model(x):
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc, scale), obs=x)


def map_guide(x):
    pyro.sample("loc", dist.Delta(pyro.param("loc_map", torch.tensor(0.3))))
    scale = pyro.param("scale_map", torch.tensor(1.2), constraint=constraints.positive)
    pyro.sample("scale", dist.Delta(scale))


def score_function_guide():
    loc = pyro.param("z_loc", torch.tensor(0.0))
    pyro.sample("z", dist.Normal(loc, 1.0).has_rsample_(False))


def discrete_model():
    c = pyro.sample("c", dist.Bernoulli(0.3))
    pyro.sample("x", dist.Normal(3.0 * c, 1.0), obs=torch.tensor(2.0))


def discrete_guide():
    p = pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
    pyro.sample("c", dist.Bernoulli(p))


def constrained_model(x):
    weights = pyro.param("weights", torch.ones(3) / 3, constraint=constraints.simplex)
    locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.0]))
    noise = pyro.param("noise", torch.tensor(0.5), constraint=constraints.interval(0.1, 2.0))
    with pyro.plate("data", len(x)):
        mix = dist.MixtureSameFamily(dist.Categorical(weights), dist.Normal(locs, noise))
        pyro.sample("x", mix, obs=x)
    shift = pyro.sample("shift", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
    pyro.sample("y", dist.Normal(shift.sum(), 1.0), obs=torch.tensor(0.5))


def constrained_guide(x):
    loc = pyro.param("shift_loc", torch.zeros(2))
    tril = pyro.param("shift_tril", torch.eye(2), constraint=constraints.lower_cholesky)
    pyro.sample("shift", dist.MultivariateNormal(loc, scale_tril=tril))


def exotic_constraints_model():
    corr = pyro.param("corr", torch.eye(3), constraint=constraints.corr_cholesky)
    ordered = pyro.param(
        "ordered", torch.tensor([-1.0, 0.0, 2.0]), constraint=constraints.ordered_vector
    )
    soft = pyro.param("soft", torch.tensor(1.0), constraint=constraints.softplus_positive)
    above = pyro.param(
        "above",
        torch.tensor([3.0, 4.0]),
        constraint=constraints.greater_than(torch.tensor([1.0, 2.0])),
    )
    unit = pyro.param("unit", torch.tensor([0.6, 0.8]), constraint=constraints.sphere)
    bounds = constraints.interval(torch.tensor([0.0, 0.1]), torch.tensor([1.0, 2.0]))
    within = pyro.param("within", torch.tensor([0.2, 0.5]), constraint=bounds)
    z = pyro.sample("z", dist.MultivariateNormal(ordered, scale_tril=corr * soft))
    loc = z.sum() + above.sum() + (unit * within).sum()
    pyro.sample("obs", dist.Normal(loc, 1.0), obs=torch.tensor(3.0))


def exotic_constraints_guide():
    _normal_guide("z", (3,))


def latent_only_model():
    # no observed site (Pyro's test_mean_field_ok)
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(x, 1.0))


def latent_only_guide():
    x = _normal_guide("x")
    pyro.sample(
        "y",
        dist.Normal(x, pyro.param("y_scale", torch.tensor(1.0), constraint=constraints.positive)),
    )


def mean_field_model(x):
    rate = pyro.sample("rate", dist.Gamma(2.0, 2.0))
    with pyro.plate("data", len(x)):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(w, rate.rsqrt()), obs=x)


def mean_field_guide(x):
    # rate: LogNormal against a Gamma prior has no closed-form KL (entropy term instead)
    loc = pyro.param("rate_loc", torch.tensor(0.0))
    pyro.sample("rate", dist.LogNormal(loc, 0.5))
    with pyro.plate("data", len(x)):
        pyro.sample("w", dist.Normal(pyro.param("w_loc", torch.zeros(len(x))), 0.8))


def _encoder(dropout: bool) -> torch.nn.Module:
    """A small amortized encoder (batch norm, optionally dropout), its weights drawn from a
    generator of its own."""
    net = torch.nn.Sequential(
        torch.nn.Linear(1, 4),
        torch.nn.BatchNorm1d(4),
        torch.nn.Dropout(0.3) if dropout else torch.nn.Identity(),
        torch.nn.Linear(4, 2),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    return net


ENCODER, DROPOUT_ENCODER = _encoder(dropout=False), _encoder(dropout=True)


def amortized_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def amortized_guide(encoder: torch.nn.Module) -> Callable[[torch.Tensor], None]:
    def guide(x):
        pyro.module("encoder", encoder)
        out = encoder(x.unsqueeze(-1))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(out[..., 0], out[..., 1].exp()))

    return guide


class _Autoguide:
    """A Pyro autoguide built afresh for each run (it keeps its parameters itself)."""

    def __init__(self, build: Callable[[], Callable[..., Any]]) -> None:
        self.build = build
        self.guide: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.guide is None:
            self.guide = self.build()
        return self.guide(*args, **kwargs)


def _guide_list() -> AutoGuideList:
    guide = AutoGuideList(nested_model)
    guide.append(AutoDelta(poutine.block(nested_model, expose=["mu"])))
    guide.append(AutoNormal(poutine.block(nested_model, hide=["mu"])))
    return guide


# --- enumeration ---------------------------------------------------------------------------


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


def enum_chain_model():
    # Pyro's test_enum_in_model_ok: discrete sites enumerated in guide and model
    infer = {"enumerate": "parallel"}
    p = pyro.param("p", torch.tensor(0.25), constraint=constraints.unit_interval)
    a = pyro.sample("a", dist.Bernoulli(p))
    b = pyro.sample("b", dist.Bernoulli(p + a / 2))
    c = pyro.sample("c", dist.Bernoulli(p + b / 2), infer=infer)
    d = pyro.sample("d", dist.Bernoulli(p + c / 2))
    pyro.sample("g", dist.Bernoulli(p + d / 2), obs=torch.tensor(0.0))


def enum_chain_guide():
    q = pyro.param("q", torch.tensor(0.25), constraint=constraints.unit_interval)
    a = pyro.sample("a", dist.Bernoulli(q), infer={"enumerate": "parallel"})
    b = pyro.sample("b", dist.Bernoulli(q + a / 2), infer={"enumerate": "parallel"})
    pyro.sample("d", dist.Bernoulli(q + b / 2), infer={"enumerate": "parallel"})


def enum_particles_model():
    # Pyro's test_enum_discrete_vectorized_num_particles, with a reparameterized b
    x_plate = pyro.plate("x_plate", 5, dim=-1)
    y_plate = pyro.plate("y_plate", 6, dim=-2)
    with x_plate:
        b = pyro.sample("b", dist.Beta(2.0, 2.0))
    with y_plate:
        c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
    with x_plate, y_plate:
        pyro.sample("d", dist.Normal(b + c, 1.0), obs=Y65)


def enum_particles_guide():
    with pyro.plate("x_plate", 5, dim=-1):
        loc = pyro.param("b_loc", torch.zeros(5))
        pyro.sample(
            "b",
            dist.TransformedDistribution(
                dist.Normal(loc, 0.5), [dist.transforms.SigmoidTransform()]
            ),
        )


def reparam_model():
    with poutine.reparam(config={"z": LocScaleReparam(0.0)}):
        z = pyro.sample("z", dist.Normal(1.0, 2.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(1.0))


def reparam_guide():
    _normal_guide("z_decentered")


def factor_guide(has_rsample: bool) -> Callable[[], None]:
    def guide():
        z = _normal_guide("z")
        pyro.factor("f", -0.5 * z**2, has_rsample=has_rsample)  # Pyro's test_factor_in_guide_ok

    return guide


def dequantized_model(x):
    # noise drawn by torch itself inside the model, as a dequantizing flow does
    loc = pyro.param("loc", torch.tensor(0.0))
    y = x + 0.1 * torch.randn_like(x) + 0.05 * torch.rand(x.shape)
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=y)


def empty_guide(*args, **kwargs):
    pass


def hmm_model():
    # enumerated in the model along a pyro.markov chain (Pyro's test_markov_history)
    trans = pyro.param(
        "trans", torch.tensor([[0.8, 0.2], [0.3, 0.7]]), constraint=constraints.simplex
    )
    locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
    state = 0
    for t in pyro.markov(range(4)):
        state = pyro.sample(
            f"s_{t}", dist.Categorical(trans[state]), infer={"enumerate": "parallel"}
        )
        pyro.sample(f"y_{t}", dist.Normal(locs[state], 1.0), obs=X4[t])


def enum_subsampled_model():
    locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
    with pyro.plate("data", 10, subsample_size=4) as i:
        k = pyro.sample("k", dist.Bernoulli(0.4), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[k.long()], 1.0), obs=X10[i])


def enum_subsampled_guide():
    with pyro.plate("data", 10, subsample_size=4):
        pass


def sampled_enum_guide(x):
    # parallel enumeration by sampling (num_samples): draws from the guide's Bernoulli
    with pyro.plate("data", len(x)):
        p = pyro.param("c_p", torch.full((len(x),), 0.5), constraint=constraints.unit_interval)
        infer = {"enumerate": "parallel", "num_samples": 3, "expand": True}
        pyro.sample("c", dist.Bernoulli(p), infer=infer)


def drifting_branch_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    if z > 0:
        pyro.sample("pos", dist.Normal(z, 1.0), obs=torch.tensor(-3.0))
    else:
        pyro.sample("neg", dist.Normal(2.0 * z, 1.0), obs=torch.tensor(-1.0))


def drifting_branch_guide():
    # z > 0 for the first four steps, then the update takes the guide's mean below 0: after
    # the compiled step's eager checks, so only its check of the branch read can tell
    pyro.sample("z", dist.Normal(pyro.param("z_loc", torch.tensor(0.6)), 0.01))


def gamma_model():
    z = pyro.sample("z", dist.Gamma(2.0, 1.0))
    pyro.sample("x", dist.Exponential(z), obs=torch.tensor(0.7))


def gamma_guide():
    # Gamma's rsample: not standard noise through differentiable ops
    a = pyro.param("a", torch.tensor(2.0), constraint=constraints.positive)
    pyro.sample("z", dist.Gamma(a, 2.0))


def scaled_by_argument_model(x, noise):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, noise), obs=x)


def scaled_by_argument_guide(x, noise):
    _normal_guide("z")


X_BATCH = [(X4,)]
ENUM_LOSS = partial(TraceEnum_ELBO, max_plate_nesting=1)


# The path for a loss the compiled step does not support: see
# test_a_loss_the_compiled_step_does_not_support_says_so for the missing log line.
UNSUPPORTED = "not supported"

CASES = [
    # plates
    Case("plate", plate_model, plate_guide, Trace_ELBO, COMPILED, X_BATCH),
    Case("plate_subsample_size", subsample_size_model, subsample_size_guide, Trace_ELBO, COMPILED),
    Case(
        "plate_user_subsample",
        user_subsample_model,
        user_subsample_guide,
        Trace_ELBO,
        COMPILED,
        USER_INDICES,
    ),
    Case("nested_plates", nested_model, nested_guide, Trace_ELBO, COMPILED),
    Case(
        "nested_subsampled_plates",
        nested_subsampled_model,
        nested_subsampled_guide,
        Trace_ELBO,
        COMPILED,
    ),
    Case("nonnested_plates", nonnested_model, nonnested_guide, Trace_ELBO, COMPILED),
    Case("plate_stack", plate_stack_model, plate_stack_guide, Trace_ELBO, COMPILED),
    Case("iplate", iplate_model, iplate_guide, Trace_ELBO, COMPILED),
    Case(
        "iplate_subsample",
        iplate_subsample_model,
        iplate_subsample_guide,
        Trace_ELBO,
        "site set changed|control flow",
    ),
    Case(
        "varying_site_count",
        varying_length_model,
        varying_length_guide,
        Trace_ELBO,
        "site set changed|shapes of the inputs change",
        VARYING_LENGTHS,
    ),
    # the sign of z is drawn afresh at each step: within 6 steps it changes (seed 3)
    Case(
        "branch_on_latent",
        branching_model,
        z_guide,
        Trace_ELBO,
        "site set changed|control flow",
        steps=6,
    ),
    Case(
        "branch_after_the_checks",
        drifting_branch_model,
        drifting_branch_guide,
        Trace_ELBO,
        "branched on changed",
        steps=7,
    ),
    # scale, mask, obs_mask, factor, deterministic
    Case("poutine_scale", scale_model, scale_guide, Trace_ELBO, COMPILED),
    Case("poutine_mask", mask_model, mask_guide, Trace_ELBO, COMPILED),
    Case("obs_mask", obs_mask_model, obs_mask_guide, Trace_ELBO, COMPILED),
    Case("obs_mask_multivariate", obs_mask_mvn_model, obs_mask_mvn_guide, Trace_ELBO, COMPILED),
    Case("factor", factor_model, z_guide, Trace_ELBO, COMPILED),
    Case("factor_in_guide", deterministic_model, factor_guide(True), Trace_ELBO, COMPILED),
    Case(
        "factor_in_guide_score_function",
        deterministic_model,
        factor_guide(False),
        Trace_ELBO,
        "'f' \\(Unit\\) is not reparameterizable",
    ),
    Case("poutine_reparam", reparam_model, reparam_guide, Trace_ELBO, COMPILED),
    Case("torch_noise_in_model", dequantized_model, empty_guide, Trace_ELBO, COMPILED, X_BATCH),
    Case(
        "python_number_arguments",
        scaled_by_argument_model,
        scaled_by_argument_guide,
        Trace_ELBO,
        COMPILED,
        [{"x": X4, "noise": 0.5}, {"x": X4, "noise": 2.0}],
        steps=6,
        signatures=2,
    ),
    Case("deterministic", deterministic_model, z_guide, Trace_ELBO, COMPILED),
    # Delta, score function, constraints, no observed site
    Case("delta_guide", map_model, map_guide, Trace_ELBO, COMPILED, X_BATCH),
    Case(
        "score_function",
        deterministic_model,
        score_function_guide,
        Trace_ELBO,
        "not reparameterizable",
    ),
    Case(
        "discrete_score_function",
        discrete_model,
        discrete_guide,
        Trace_ELBO,
        "not reparameterizable",
    ),
    Case("gamma_guide", gamma_model, gamma_guide, Trace_ELBO, "_standard_gamma"),
    Case(
        "trace_graph_plates",
        nested_subsampled_model,
        nested_subsampled_guide,
        TraceGraph_ELBO,
        UNSUPPORTED,
    ),
    Case(
        "exotic_constraints",
        exotic_constraints_model,
        exotic_constraints_guide,
        Trace_ELBO,
        COMPILED,
    ),
    Case(
        "constrained_params_adam",
        constrained_model,
        constrained_guide,
        Trace_ELBO,
        COMPILED,
        X_BATCH,
        adam,
    ),
    Case("no_observed_site", latent_only_model, latent_only_guide, Trace_ELBO, COMPILED),
    Case(
        "mean_field_kl_and_entropy",
        mean_field_model,
        mean_field_guide,
        TraceMeanField_ELBO,
        COMPILED,
        X_BATCH,
    ),
    Case(
        "pyro_module_batch_norm",
        amortized_model,
        amortized_guide(ENCODER),
        Trace_ELBO,
        COMPILED,
        [(X4,)],
        modules=(ENCODER,),
    ),
    Case(
        "pyro_module_dropout",
        amortized_model,
        amortized_guide(DROPOUT_ENCODER),
        Trace_ELBO,
        COMPILED,
        [(X4,)],
        modules=(DROPOUT_ENCODER,),
    ),
    # Pyro's autoguides
    Case(
        "autonormal_nested_subsampled_plates",
        nested_subsampled_model,
        _Autoguide(lambda: AutoNormal(nested_subsampled_model)),
        lambda: Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=2),
        COMPILED,
    ),
    Case(
        "autoguidelist_delta_and_normal",
        nested_model,
        _Autoguide(_guide_list),
        Trace_ELBO,
        COMPILED,
    ),
    Case(
        "autodelta_enum_in_model",
        mixture_model,
        _Autoguide(lambda: AutoDelta(poutine.block(mixture_model, hide=["k"]))),
        ENUM_LOSS,
        COMPILED,
        X_BATCH,
    ),
    Case(
        "autodiscrete_parallel",
        enum_guide_model,
        _Autoguide(lambda: AutoDiscreteParallel(enum_guide_model)),
        ENUM_LOSS,
        COMPILED,
        X_BATCH,
    ),
    # particles
    Case(
        "num_particles",
        plate_model,
        plate_guide,
        lambda: Trace_ELBO(num_particles=3),
        COMPILED,
        X_BATCH,
    ),
    Case(
        "vectorize_particles_guessed_nesting",
        nested_subsampled_model,
        nested_subsampled_guide,
        lambda: Trace_ELBO(num_particles=2, vectorize_particles=True),
        COMPILED,
    ),
    Case(
        "mean_field_particles",
        mean_field_model,
        mean_field_guide,
        lambda: TraceMeanField_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1),
        COMPILED,
        X_BATCH,
    ),
    # enumeration
    Case(
        "enum_in_guide",
        enum_guide_model,
        config_enumerate(enum_guide_guide, "parallel"),
        lambda: TraceEnum_ELBO(max_plate_nesting=1),
        COMPILED,
        X_BATCH,
    ),
    Case(
        "enum_in_guide_guessed_nesting",
        enum_guide_model,
        config_enumerate(enum_guide_guide, "parallel"),
        TraceEnum_ELBO,
        COMPILED,
        X_BATCH,
    ),
    Case(
        "enum_sequential",
        enum_guide_model,
        config_enumerate(enum_guide_guide, "sequential"),
        lambda: TraceEnum_ELBO(max_plate_nesting=1),
        "enumerated sequentially",
        X_BATCH,
    ),
    Case(
        "enum_in_model",
        mixture_model,
        mixture_guide,
        lambda: TraceEnum_ELBO(max_plate_nesting=1),
        COMPILED,
        X_BATCH,
    ),
    Case(
        "enum_in_model_adam",
        mixture_model,
        mixture_map_guide,
        lambda: TraceEnum_ELBO(max_plate_nesting=1),
        COMPILED,
        X_BATCH,
        adam,
    ),
    Case(
        "enum_markov_chain",
        hmm_model,
        empty_guide,
        lambda: TraceEnum_ELBO(max_plate_nesting=0),
        COMPILED,
    ),
    Case(
        "enum_in_subsampled_plate",
        enum_subsampled_model,
        enum_subsampled_guide,
        lambda: TraceEnum_ELBO(max_plate_nesting=1),
        COMPILED,
    ),
    Case(
        "enum_sampled",
        enum_guide_model,
        sampled_enum_guide,
        lambda: TraceEnum_ELBO(max_plate_nesting=1),
        "aten.bernoulli",
        X_BATCH,
    ),
    Case(
        "enum_in_guide_and_model",
        enum_chain_model,
        enum_chain_guide,
        lambda: TraceEnum_ELBO(max_plate_nesting=0),
        COMPILED,
    ),
    Case(
        "enum_vectorize_particles",
        enum_particles_model,
        enum_particles_guide,
        lambda: TraceEnum_ELBO(max_plate_nesting=2, num_particles=3, vectorize_particles=True),
        COMPILED,
    ),
]


# --- the comparison ------------------------------------------------------------------------


def _params() -> dict[str, torch.Tensor]:
    """The unconstrained values the optimizer moves, by name."""
    return {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


def _step_args(batch: Any) -> tuple[tuple, dict]:
    if batch is None:
        return (), {}
    return (batch, {}) if isinstance(batch, tuple) else ((), batch)


def _size(batch: Any) -> int:
    args, kwargs = _step_args(batch)
    tensors = [t for t in (*args, *kwargs.values()) if torch.is_tensor(t) and t.dim() > 0]
    return tensors[0].shape[0] if tensors else 1


_INITIAL_STATES: dict[int, dict[str, torch.Tensor]] = {}


def _put_back(case: Case) -> None:
    """Modules start each run from the state they had before the first, autoguides
    unbuilt."""
    if isinstance(case.guide, _Autoguide):
        case.guide.guide = None
    for m in case.modules:
        initial = _INITIAL_STATES.setdefault(id(m), copy.deepcopy(m.state_dict()))
        m.load_state_dict(initial)


def _states(case: Case) -> list[dict[str, torch.Tensor]]:
    return [copy.deepcopy(m.state_dict()) for m in case.modules]


def _pyro_run(case: Case) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """Pyro's own SVI loop: the parameters after each step, and each step's loss."""
    pyro.clear_param_store()
    _put_back(case)
    pyro.set_rng_seed(SEED)
    if isinstance(case.guide, _Autoguide):
        # fit builds a lazy guide in a warm-up run that leaves the RNG where it was (its
        # prototype trace draws from the model): build it so here too
        rng = pyro.util.get_rng_state()
        args, kwargs = _step_args(case.batches[0] if case.batches else None)
        case.guide(*args, **kwargs)
        pyro.util.set_rng_state(rng)
    svi = SVI(case.model, case.guide, case.optim(), case.loss())
    params, losses = [], []
    for step in range(case.steps):
        args, kwargs = _step_args(case.batches[step % len(case.batches)] if case.batches else None)
        losses.append(svi.step(*args, **kwargs))
        params.append(_params())
    return params, losses


def _fit_run(case: Case) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
    """fit's run (default, compiled path): the parameters after each step, its history."""
    pyro.clear_param_store()
    _put_back(case)
    pyro.set_rng_seed(SEED)
    params: list[dict[str, torch.Tensor]] = []
    result = fit(
        case.model, () if case.batches is None else case.batches, guide=case.guide,
        loss=case.loss(), steps=case.steps, optim=case.optim(), progress=False,
        # it only reads: no check of the recording after it
        step_callbacks=[changes_only_tensors(lambda step, model: params.append(_params()))],
    )  # fmt: skip
    return params, result.history


def _epoch_losses(case: Case, losses: list[float]) -> list[float]:
    """The train_loss records fit writes for these step losses: per epoch (100 steps when
    there is no data, else one pass over the batches), the loss per example."""
    per_epoch = 100 if case.batches is None else len(case.batches)
    steps = case.steps
    sizes = [
        _size(case.batches[s % len(case.batches)]) if case.batches else 1 for s in range(steps)
    ]
    out = []
    for start in range(0, steps, per_epoch):
        stop = min(start + per_epoch, steps)
        out.append(math.fsum(losses[start:stop]) / sum(sizes[start:stop]))
    return out


def _path(caplog: pytest.LogCaptureFixture) -> str:
    """What the log says the step did: COMPILED, or the fallback's reason."""
    lines = [r.getMessage() for r in caplog.records if r.name == "pyro_gen"]
    off = [line for line in lines if "compiled SVI step off" in line or "not supported" in line]
    if off:
        return off[0]
    if not lines:
        return PLAIN_UNSAID
    assert any("recorded the ELBO step" in line for line in lines), lines
    return COMPILED


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_fit_trains_as_pyros_svi(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    # counts the steps the recorded program took (the others were plain Pyro steps)
    with (
        caplog.at_level(logging.INFO, logger="pyro_gen"),
        mock.patch.object(CompiledSVI, "_run", autospec=True, side_effect=CompiledSVI._run) as run,
    ):
        ours, history = _fit_run(case)
    path = _path(caplog)
    our_states = _states(case)
    theirs, losses = _pyro_run(case)
    torch.testing.assert_close(our_states, _states(case), rtol=1e-5, atol=1e-6)
    assert len(ours) == len(theirs) == case.steps
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert a.keys() == b.keys(), (step, sorted(a), sorted(b))
        for name in a:
            torch.testing.assert_close(
                a[name], b[name], rtol=1e-5, atol=1e-6, msg=f"param {name!r} after step {step + 1}"
            )
    reported = [record["train_loss"] for record in history]
    assert reported == pytest.approx(_epoch_losses(case, losses), rel=1e-5, abs=1e-6)
    if case.path == COMPILED:
        assert path == COMPILED, path
        assert run.call_count == case.steps - case.signatures
    else:
        assert path != COMPILED and re.search(case.path, path), path


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
        runs.append(_params())
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", [TraceGraph_ELBO, lambda: RenyiELBO(num_particles=2)],
                         ids=["TraceGraph_ELBO", "RenyiELBO"])  # fmt: skip
def test_a_loss_the_compiled_step_does_not_support_says_so(loss, caplog):
    with caplog.at_level(logging.INFO, logger="pyro_gen"):
        fit(deterministic_model, (), guide=z_guide, loss=loss(), steps=1, optim=sgd(),
            progress=False)  # fmt: skip
    assert re.search("not supported", _path(caplog)), _path(caplog)


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
    ours = _params()
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    beta = [0.0]
    svi = SVI(*_annealed_mixture(beta), sgd(), ENUM_LOSS())
    for step in range(STEPS):
        beta[0] = schedule(step)
        svi.step(X4)
    torch.testing.assert_close(ours, _params(), rtol=1e-5, atol=1e-6)


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


# --- evaluate_elbo against loss.loss -------------------------------------------------------


def conjugate_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def exact_posterior_guide(x):
    # z | x ~ N(sum(x) / (N + 1), 1 / (N + 1)): log p(x, z) - log q(z) = log p(x) for every z
    n = len(x)
    pyro.sample("z", dist.Normal(x.sum() / (n + 1), (1.0 / (n + 1)) ** 0.5))


def log_evidence(x: torch.Tensor) -> float:
    """log N(x; 0, I + 1 1^T), the conjugate model's marginal likelihood."""
    n = len(x)
    cov = torch.eye(n, dtype=torch.float64) + 1.0
    return float(
        dist.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov).log_prob(x.double())
    )


def masked_scaled_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    mask = torch.tensor([True, False, True, True])
    with pyro.plate("data", len(x)), poutine.mask(mask=mask), poutine.scale(scale=0.5):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def z_map_guide(x):
    pyro.sample("z", dist.Delta(pyro.param("z_map", torch.tensor(0.4))))


def obs_mask_data_model(y):
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample(
            "y", dist.Normal(x, 1.0), obs=y, obs_mask=torch.tensor([False, True, False, True])
        )


def obs_mask_map_guide(y):
    pyro.sample("x", dist.Delta(pyro.param("x_map", torch.tensor(0.3))))
    with pyro.plate("data", len(y)), poutine.mask(mask=torch.tensor([True, False, True, False])):
        pyro.sample("y_unobserved", dist.Delta(pyro.param("y_map", torch.zeros(len(y)))))


def indexed_model(idx):
    # the user subsamples: minibatches of indices into data the model holds
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(X10), subsample=idx):
        pyro.sample("x", dist.Normal(z, 0.5), obs=X10[idx])


def indexed_map_guide(idx):
    pyro.sample("z", dist.Delta(pyro.param("z_map", torch.tensor(0.4))))


EVALUATIONS = [
    # (id, model, guide, loss, data, batch_size): estimates without noise, so they must agree
    # exactly; in batches, the global sites are counted once for the whole data
    ("delta_guide", map_model, map_guide, Trace_ELBO, X4, 4),
    ("delta_guide_in_batches", map_model, map_guide, Trace_ELBO, X10, 3),
    ("enum_in_model", mixture_model, mixture_map_guide, ENUM_LOSS, X4, 4),
    ("enum_in_model_in_batches", mixture_model, mixture_map_guide, ENUM_LOSS, X10, 3),
    ("mask_and_scale", masked_scaled_model, z_map_guide, Trace_ELBO, X4, 4),
    ("obs_mask", obs_mask_data_model, obs_mask_map_guide, Trace_ELBO, X4, 4),
    ("exact_posterior", conjugate_model, exact_posterior_guide, Trace_ELBO, X4, 4),
    ("user_subsample_in_batches", indexed_model, indexed_map_guide, Trace_ELBO,
     torch.arange(len(X10)), 4),
]  # fmt: skip


# Delta guides are the point of these rows: the ELBO is then log p(x, z) at the points
@pytest.mark.filterwarnings("ignore:guide sites .* are point masses")
@pytest.mark.parametrize(("model", "guide", "loss", "data", "batch_size"),
                         [e[1:] for e in EVALUATIONS], ids=[e[0] for e in EVALUATIONS])  # fmt: skip
def test_evaluate_elbo_is_pyros_loss_per_example(model, guide, loss, data, batch_size):
    """The ELBO per example is ``-loss.loss / N`` on the whole data where no draw changes it
    (Delta guides, sites summed out, an exact posterior), whatever the batch size."""
    ours = evaluate_elbo(model, data, guide=guide, loss=loss(), batch_size=batch_size)
    theirs = -loss().loss(model, guide, data) / len(data)
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-6)
    if model is conjugate_model:
        assert ours == pytest.approx(log_evidence(data) / len(data), rel=1e-5)


def test_evaluate_elbo_with_mean_field_kl_matches_pyros_estimate():
    """With TraceMeanField_ELBO the KL is taken in closed form and the likelihood term is
    drawn: evaluate_elbo and Pyro's vectorized estimate agree with the evidence (the guide is
    the exact posterior) within five standard errors of the per-draw estimate."""
    draws = 4000
    q = dist.Normal(X4.sum() / 5, 0.2**0.5)
    z = q.sample((20000,))
    kl = kl_divergence(q, dist.Normal(0.0, 1.0))
    per_draw = dist.Normal(z.unsqueeze(-1), 1.0).log_prob(X4).sum(-1) - kl
    tolerance = 5 * float(per_draw.std()) / draws**0.5 / len(X4)
    expected = log_evidence(X4) / len(X4)
    loss = TraceMeanField_ELBO(num_particles=draws, vectorize_particles=True, max_plate_nesting=1)
    ours = evaluate_elbo(conjugate_model, X4, guide=exact_posterior_guide, loss=loss)
    theirs = -loss.loss(conjugate_model, exact_posterior_guide, X4) / len(X4)
    assert ours == pytest.approx(expected, abs=tolerance)
    assert theirs == pytest.approx(expected, abs=tolerance)
