"""Users' models whose examples are not simply the one plate of the data, as in Pyro's
"Tensor shapes" tutorial: a data plate at ``dim=-2`` with a plate over features inside it,
and a matrix with a latent per column, evaluated in batches of rows.

Each value is checked against a closed form (a Gaussian latent with its exact posterior as
the guide makes every bound equal to :math:`\\log p(x)`) or against Pyro's ``Trace_ELBO``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood

_g = torch.Generator().manual_seed(0)
ROWS = torch.randn(7, 3, generator=_g)  # 7 examples of 3 features


def rows_by_features(x: torch.Tensor) -> None:
    # z_nd ~ N(0, 1), x_nd ~ N(z_nd, 1): both plates enclose both sites
    with pyro.plate("features", x.shape[1], dim=-1), pyro.plate("data", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def rows_by_features_posterior(x: torch.Tensor) -> None:
    with pyro.plate("features", x.shape[1], dim=-1), pyro.plate("data", x.shape[0], dim=-2):
        pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))


def _log_evidence(x: torch.Tensor) -> torch.Tensor:
    return dist.Normal(0.0, 2**0.5).log_prob(x).sum(-1).double()


@pytest.mark.parametrize("batch_size", [4, 7])
@pytest.mark.parametrize("estimator", ["elbo", "iwae"])
def test_examples_at_dim_minus_two_with_features_inside_are_the_rows(estimator, batch_size):
    """Both plates enclose every site, so the plate of the batch's rows is the data plate
    (this asked for plate_name=): each row's value is its log-evidence, in any batch size."""
    if estimator == "elbo":
        values = evaluate_elbo(
            rows_by_features,
            ROWS,
            guide=rows_by_features_posterior,
            batch_size=batch_size,
            per_example=True,
        )
    else:
        values = iwae_log_likelihood(
            rows_by_features,
            ROWS,
            guide=rows_by_features_posterior,
            batch_size=batch_size,
            num_samples=3,
            per_example=True,
        )
    assert values.shape == (7,)
    assert torch.allclose(values, _log_evidence(ROWS), atol=1e-5)


def test_fit_records_the_held_out_elbo_of_rows_at_dim_minus_two():
    """fit trains such a model and scores its eval_data per row: with the exact posterior as
    guide and nothing to train but a scale of 1, the test ELBO is the mean log-evidence."""
    pyro.clear_param_store()
    result = fit(
        rows_by_features,
        ROWS,
        guide=rows_by_features_posterior,
        steps=2,
        batch_size=4,
        eval_data=ROWS[:5],
        progress=False,
    )
    expected = float(_log_evidence(ROWS[:5]).mean())
    assert result.history[-1]["test_elbo"] == pytest.approx(expected, abs=1e-5)


def test_square_rows_and_features_still_ask_for_plate_name():
    """Where the batch's rows do not tell the plates apart (3 rows, 3 features), the error
    names both plates and asks for plate_name=; given, the rows are scored."""
    x = ROWS[:3]
    with pytest.raises(ValueError, match=r"\['data', 'features'\].*3 rows.*plate_name="):
        evaluate_elbo(rows_by_features, x, guide=rows_by_features_posterior)
    values = evaluate_elbo(
        rows_by_features, x, guide=rows_by_features_posterior, plate_name="data", per_example=True
    )
    assert torch.allclose(values, _log_evidence(x), atol=1e-5)


# ---------------------------------------------------------------------------------------
# a latent per column: the columns are the examples, the rows are not

MATRIX = torch.randn(5, 4, generator=_g)


def column_effects(x: torch.Tensor) -> None:
    # c_j ~ N(0, 1), x_ij ~ N(c_j, 1): the columns are independent, the rows share c
    with pyro.plate("columns", x.shape[1]):
        c = pyro.sample("c", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", x.shape[0], dim=-2):
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)


def column_posterior(x: torch.Tensor) -> None:
    n = x.shape[0]  # the exact posterior of c_j given its column
    with pyro.plate("columns", x.shape[1]):
        pyro.sample("c", dist.Normal(x.sum(0) / (n + 1), (1 / (n + 1)) ** 0.5))


def _column_log_evidence(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    cov = torch.eye(n, dtype=torch.float64) + 1.0  # x_.j ~ N(0, I + 1 1^T)
    return dist.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov).log_prob(x.T.double())


@pytest.mark.parametrize("estimator", [evaluate_elbo, iwae_log_likelihood])
def test_a_latent_per_column_is_refused_in_batches_of_rows(estimator):
    """Cut into batches of 2 rows, each batch scored the 4 columns again on part of their
    data (12 values for 5 rows, the prior of c counted three times); now one error says why
    and what to pass. Whole, the columns are scored: each its log-evidence."""
    with pytest.raises(ValueError, match=r"2 rows of 5.*'columns' has size 4.*batch_size=5"):
        estimator(column_effects, MATRIX, guide=column_posterior, batch_size=2)
    values = estimator(column_effects, MATRIX, guide=column_posterior, per_example=True)
    assert values.shape == (4,)
    assert torch.allclose(values, _column_log_evidence(MATRIX), atol=1e-4)
    # and their sum is Pyro's ELBO of the matrix
    pyro.set_rng_seed(0)
    assert float(values.sum()) == pytest.approx(
        -Trace_ELBO().loss(column_effects, column_posterior, MATRIX), abs=1e-3
    )
