"""Plates nested, non-nested, stacked and sequential, subsampled by size and by the user's
indices, and site sets that change between steps."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from .case import COMPILED, Case, case_params
from .programs import (
    X4,
    X10,
    X_BATCH,
    nested_guide,
    nested_model,
    nested_subsampled_guide,
    nested_subsampled_model,
    normal_guide,
    plate_guide,
    plate_model,
    z_guide,
)
from .runner import assert_trains_as_pyros_svi


def subsample_size_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 10, subsample_size=4) as ind:
        w = pyro.sample("w", dist.Normal(z, 1.0))
        pyro.sample("x", dist.Normal(w, 0.5), obs=X10[ind])


def subsample_size_guide():
    normal_guide("z")
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
    normal_guide("z")
    with pyro.plate("data", 10, subsample=idx):
        loc = pyro.param("w_loc", torch.zeros(10), event_dim=0)
        pyro.sample("w", dist.Normal(loc, 0.5))


USER_INDICES = [(torch.tensor([0, 3, 7]),), (torch.tensor([9, 1, 2]),), (torch.tensor([5, 4, 8]),)]


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
    normal_guide("z")
    for i in pyro.plate("seq", 3):
        pyro.sample(f"w_{i}", dist.Normal(pyro.param(f"w_{i}_loc", torch.tensor(0.0)), 1.0))


def iplate_subsample_model():
    # which sites exist is drawn at each step: the subsample of a sequential plate
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    for i in pyro.plate("seq", 10, subsample_size=2):
        pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=X10[i])


def iplate_subsample_guide():
    normal_guide("z")
    for _ in pyro.plate("seq", 10, subsample_size=2):
        pass


def varying_length_model(x):
    # one site per element: the site set follows the batch
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    for t in range(len(x)):
        pyro.sample(f"x_{t}", dist.Normal(z, 1.0), obs=x[t])


def varying_length_guide(x):
    normal_guide("z")


VARYING_LENGTHS = [(X4[:2],), (X4[:3],), (X4,)]


def branching_model():
    # the observed site depends on the sign of a latent draw
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    if z > 0:
        pyro.sample("pos", dist.Normal(z, 1.0), obs=torch.tensor(1.0))
    else:
        pyro.sample("neg", dist.Normal(2.0 * z, 1.0), obs=torch.tensor(-1.0))


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


CASES = [
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
]


@pytest.mark.parametrize("case", case_params(CASES))
def test_fit_trains_as_pyros_svi(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    assert_trains_as_pyros_svi(case, caplog)
