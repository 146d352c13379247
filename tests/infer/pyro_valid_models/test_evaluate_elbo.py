"""``evaluate_elbo`` against ``loss.loss`` and closed forms where both estimate the same
number without noise (Delta guides, enumerated sites, an exact posterior)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pyro_gen.infer import evaluate_elbo

from .programs import ENUM_LOSS, X4, X10, map_guide, map_model, mixture_map_guide, mixture_model


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
