"""Site kinds: ``poutine.scale`` and ``poutine.mask``, ``obs_mask``, ``pyro.factor``,
``pyro.deterministic``, reparam, Delta, score-function and Gamma guide sites, noise drawn by
torch, Python-number arguments and a model with no observed site."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO
from pyro.infer.reparam import LocScaleReparam

from .case import COMPILED, Case, case_params
from .programs import (
    X4,
    X_BATCH,
    deterministic_model,
    empty_guide,
    map_guide,
    map_model,
    normal_guide,
    z_guide,
)
from .runner import assert_trains_as_pyros_svi


def scale_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with poutine.scale(scale=0.1):
        pyro.sample("a", dist.Normal(z, 1.0), obs=torch.tensor(2.0))
    with pyro.plate("data", 2), poutine.scale(scale=torch.tensor([0.3, 3.0])):
        w = pyro.sample("w", dist.Normal(z, 1.0))
        pyro.sample("x", dist.Normal(w, 1.0), obs=torch.tensor([1.0, -1.0]))


def scale_guide():
    normal_guide("z")
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
    normal_guide("z")
    pyro.sample("u", dist.Normal(pyro.param("u_loc", torch.tensor(0.5)), 1.0).mask(False))


OBS_MASK = torch.tensor([False, True, False])


def obs_mask_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    with pyro.plate("plate", 3):
        pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor([7.0, 7.0, 7.0]), obs_mask=OBS_MASK)


def obs_mask_guide():
    x = normal_guide("x")
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


def score_function_guide():
    loc = pyro.param("z_loc", torch.tensor(0.0))
    pyro.sample("z", dist.Normal(loc, 1.0).has_rsample_(False))


def discrete_model():
    c = pyro.sample("c", dist.Bernoulli(0.3))
    pyro.sample("x", dist.Normal(3.0 * c, 1.0), obs=torch.tensor(2.0))


def discrete_guide():
    p = pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
    pyro.sample("c", dist.Bernoulli(p))


def latent_only_model():
    # no observed site (Pyro's test_mean_field_ok)
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(x, 1.0))


def latent_only_guide():
    x = normal_guide("x")
    pyro.sample(
        "y",
        dist.Normal(x, pyro.param("y_scale", torch.tensor(1.0), constraint=constraints.positive)),
    )


def reparam_model():
    with poutine.reparam(config={"z": LocScaleReparam(0.0)}):
        z = pyro.sample("z", dist.Normal(1.0, 2.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(1.0))


def reparam_guide():
    normal_guide("z_decentered")


def factor_guide(has_rsample: bool) -> Callable[[], None]:
    def guide():
        z = normal_guide("z")
        pyro.factor("f", -0.5 * z**2, has_rsample=has_rsample)  # Pyro's test_factor_in_guide_ok

    return guide


def dequantized_model(x):
    # noise drawn by torch itself inside the model, as a dequantizing flow does
    loc = pyro.param("loc", torch.tensor(0.0))
    y = x + 0.1 * torch.randn_like(x) + 0.05 * torch.rand(x.shape)
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=y)


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
    normal_guide("z")


CASES = [
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
    Case("no_observed_site", latent_only_model, latent_only_guide, Trace_ELBO, COMPILED),
]


@pytest.mark.parametrize("case", case_params(CASES))
def test_fit_trains_as_pyros_svi(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    assert_trains_as_pyros_svi(case, caplog)
