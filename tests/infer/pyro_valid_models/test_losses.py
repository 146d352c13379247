"""Losses other than Trace_ELBO (TraceGraph, TraceMeanField, TraceEnum), particles,
vectorized or not, and enumeration in guide and model."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import (
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    config_enumerate,
)

from .case import COMPILED, UNSUPPORTED, Case, adam, case_params
from .programs import (
    X4,
    X10,
    X_BATCH,
    Y65,
    empty_guide,
    enum_guide_guide,
    enum_guide_model,
    mixture_guide,
    mixture_map_guide,
    mixture_model,
    nested_subsampled_guide,
    nested_subsampled_model,
    plate_guide,
    plate_model,
)
from .runner import assert_trains_as_pyros_svi


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


CASES = [
    Case(
        "trace_graph_plates",
        nested_subsampled_model,
        nested_subsampled_guide,
        TraceGraph_ELBO,
        UNSUPPORTED,
    ),
    Case(
        "mean_field_kl_and_entropy",
        mean_field_model,
        mean_field_guide,
        TraceMeanField_ELBO,
        COMPILED,
        X_BATCH,
    ),
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


@pytest.mark.parametrize("case", case_params(CASES))
def test_fit_trains_as_pyros_svi(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    assert_trains_as_pyros_svi(case, caplog)
