"""Constrained params, ``pyro.module`` networks (batch norm, dropout) and Pyro's
autoguides."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoDiscreteParallel, AutoGuideList, AutoNormal

from .case import COMPILED, Autoguide, Case, adam, case_params
from .programs import (
    ENUM_LOSS,
    X4,
    X_BATCH,
    enum_guide_model,
    mixture_model,
    nested_model,
    nested_subsampled_model,
    normal_guide,
)
from .runner import assert_trains_as_pyros_svi


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
    normal_guide("z", (3,))


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


def _guide_list() -> AutoGuideList:
    guide = AutoGuideList(nested_model)
    guide.append(AutoDelta(poutine.block(nested_model, expose=["mu"])))
    guide.append(AutoNormal(poutine.block(nested_model, hide=["mu"])))
    return guide


CASES = [
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
    Case(
        "autonormal_nested_subsampled_plates",
        nested_subsampled_model,
        Autoguide(lambda: AutoNormal(nested_subsampled_model)),
        lambda: Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=2),
        COMPILED,
    ),
    Case(
        "autoguidelist_delta_and_normal",
        nested_model,
        Autoguide(_guide_list),
        Trace_ELBO,
        COMPILED,
    ),
    Case(
        "autodelta_enum_in_model",
        mixture_model,
        Autoguide(lambda: AutoDelta(poutine.block(mixture_model, hide=["k"]))),
        ENUM_LOSS,
        COMPILED,
        X_BATCH,
    ),
    Case(
        "autodiscrete_parallel",
        enum_guide_model,
        Autoguide(lambda: AutoDiscreteParallel(enum_guide_model)),
        ENUM_LOSS,
        COMPILED,
        X_BATCH,
    ),
]


@pytest.mark.parametrize("case", case_params(CASES))
def test_fit_trains_as_pyros_svi(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    assert_trains_as_pyros_svi(case, caplog)
