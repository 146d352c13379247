"""pyro_gen's evaluation helpers given what they cannot take: an ambiguous or missing data
plate, bad model/guide pairs, a guide plate named otherwise than the model's, a transform that
is not a function; each is one clear error. The progress bar is shown only when asked."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from tests.infer.evaluation_models import X, _scalar_model


def test_ambiguous_or_missing_data_plate_asks_for_plate_name():
    def grid(x: torch.Tensor) -> None:
        with pyro.plate("rows", x.shape[0], dim=-2), pyro.plate("cols", x.shape[1], dim=-1):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    # Square: the sizes cannot say which plate holds the examples, so the user must.
    x = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"\['cols', 'rows'\].*plate_name="):
        evaluate_elbo(grid, x, guide=lambda x: None)
    values = evaluate_elbo(grid, x, guide=lambda x: None, plate_name="rows", per_example=True)
    assert values.shape == (3,)
    assert torch.allclose(
        values, torch.full((3,), -1.5 * math.log(2 * math.pi), dtype=torch.float64)
    )
    # Not square: the plate as long as the batch's first dimension is the data plate.
    rows = evaluate_elbo(grid, torch.zeros(4, 3), guide=lambda x: None, per_example=True)
    assert rows.shape == (4,)
    with pytest.raises(ValueError, match="'depth' is not a vectorized plate.*'cols', 'rows'"):
        evaluate_elbo(grid, x, guide=lambda x: None, plate_name="depth")

    def unplated(x: torch.Tensor) -> None:
        pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(1), obs=x)

    with pytest.raises(ValueError, match="no vectorized plate encloses.*plate_name="):
        iwae_log_likelihood(unplated, x[:, 0], guide=lambda x: None, num_samples=2)


def test_bad_model_guide_pairs_get_one_clear_error():
    model, _ = _scalar_model("data")
    with pytest.raises(TypeError, match="guide="):
        evaluate_elbo(model, X)

    def typo_guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("zz", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="guide site 'zz' is not a sample site of the model"):
        evaluate_elbo(model, X, guide=typo_guide)
    with pytest.raises(ValueError, match="num_particles"):
        evaluate_elbo(model, X, guide=typo_guide, num_particles=0)
    # a model conditioned on its latent (pyro.condition) with the old guide still sampling
    # it: the guide's -log q was scored against log p of the conditioned value, silently
    conditioned = poutine.condition(model, data={"z": torch.zeros_like(X)})
    for estimate in (evaluate_elbo, iwae_log_likelihood):
        with pytest.raises(ValueError, match="guide site 'z' is observed in the model"):
            estimate(conditioned, X, guide=_scalar_model("data")[1])


def test_progress_bar_is_shown_only_when_asked(capsys):
    model, guide = _scalar_model("data")
    iwae_log_likelihood(model, X, guide=guide, num_samples=4, chunk=2, batch_size=6)
    assert "iwae_log_likelihood" not in capsys.readouterr().err
    iwae_log_likelihood(model, X, guide=guide, num_samples=4, chunk=2, batch_size=6, progress=True)
    assert "iwae_log_likelihood" in capsys.readouterr().err


def _one_latent_per_example(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z[..., None], 1.0).to_event(1), obs=x)


def test_a_guide_plate_named_otherwise_than_the_models_is_refused_before_training():
    """The guide's per-example plate named "batch", the model's "data": each z counted as
    one draw shared by the batch, and iwae_log_likelihood gave a joint estimate, 0.11 nats
    an example below the exact log-likelihood at K=1000 on this seed (Pyro only warns while
    training); the refusal is taken out below to show it. Named alike, the estimate is
    within 0.01 of the exact value."""
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    exact = dist.MultivariateNormal(torch.zeros(3), torch.eye(3) + 1).log_prob(x).mean()

    def guide(x, plate="batch"):
        # near the exact posterior, N(sum(x) / 4, 1 / 4) per example
        with pyro.plate(plate, x.shape[0]):
            pyro.sample("z", dist.Normal(x.sum(-1) / 4 + 0.3, 0.8))

    message = r"guide site 'z' lies in the guide's plate 'batch' but in the model's data plate"
    for evaluate in (iwae_log_likelihood, evaluate_elbo):
        with pytest.raises(ValueError, match=message):
            evaluate(_one_latent_per_example, x, guide=guide)
    pyro.clear_param_store()
    calls = []
    with pytest.raises(ValueError, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pyro's "plate statements in guide"
        fit(_one_latent_per_example, x, guide=guide, epochs=1, batch_size=64, progress=False,
            eval_data=x, callbacks=[lambda record, model: calls.append(record)])  # fmt: skip
    assert not calls  # refused before the first epoch, not after it
    pyro.set_rng_seed(0)
    same = iwae_log_likelihood(
        _one_latent_per_example, x, guide=lambda x: guide(x, "data"), num_samples=1000
    )
    assert same == pytest.approx(float(exact), abs=0.01)
    pyro.set_rng_seed(0)
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        patch.setattr("pyro_gen.infer.log_weights.check_guide_plates", lambda *args: None)
        joint = iwae_log_likelihood(_one_latent_per_example, x, guide=guide, num_samples=1000)
    assert float(exact) - joint > 0.1  # what the refusal keeps from being reported


@pytest.mark.parametrize("evaluate", [evaluate_elbo, iwae_log_likelihood])
def test_a_transform_that_is_not_a_function_is_named(evaluate):
    """transform=255 (meant as a scale) failed with Python's "'int' object is not callable"."""
    x = torch.zeros(4, 3)
    with pytest.raises(TypeError, match=r"transform must be a function of a batch tensor.*got 255"):
        evaluate(_one_latent_per_example, x, guide=lambda x: None, transform=255)
    with pytest.raises(TypeError, match=r"got \{'x': 255\}"):
        evaluate(_one_latent_per_example, x, guide=lambda x: None, transform={"x": 255})
