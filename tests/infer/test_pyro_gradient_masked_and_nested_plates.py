"""CompiledSVI's gradients on the pairs Pyro's gradient tests leave to test_valid_models:
a site split by ``obs_mask`` and nested plates that draw their own subsamples.

The pairs are written again here (read from Pyro, not copied) and run through
:class:`~pyro_gen.infer.compiled.CompiledSVI` (``fit``'s default step) and through Pyro's
``loss.loss_and_grads``, each call on the same seed from the same param store
(pyro_gradient_checks.same_as_pyro): the loss and every parameter's gradient must be Pyro's,
to float rounding, and the step must take the path the pair states (its recorded program, or
Pyro's step after one log line saying why)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from tests.infer.pyro_gradient_checks import COMPILED, _vectorized, same_as_pyro

# float64 throughout (tests/conftest.py, whose autouse fixture also clears the param store)
pytestmark = pytest.mark.usefixtures("float64_default")


# --- the pairs Pyro's gradient tests leave to test_valid_models: obs_mask, nested plates ---

OBS_MASK = torch.tensor([True, False, True, False])


def obs_mask_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x, obs_mask=OBS_MASK)


def obs_mask_guide(x):
    loc = pyro.param("z_loc", torch.tensor(0.3))
    pyro.sample("z", dist.Normal(loc, 0.8))
    with pyro.plate("data", len(x)):
        x_loc = pyro.param("x_loc", torch.zeros(len(x)))
        pyro.sample("x_unobserved", dist.Normal(x_loc, 1.0))


def nested_subsampled_model():
    with pyro.plate("outer", 5, subsample_size=3, dim=-1) as i:
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        with pyro.plate("inner", 6, subsample_size=2, dim=-2) as j:
            y = pyro.sample("y", dist.Normal(x, 1.0))
            pyro.sample("obs", dist.Normal(y, 0.5), obs=torch.ones(6, 5)[j][:, i])


def nested_subsampled_guide():
    with pyro.plate("outer", 5, subsample_size=3, dim=-1):
        px = pyro.param("px", torch.zeros(5), event_dim=0)
        pyro.sample("x", dist.Normal(px, 1.0))
        with pyro.plate("inner", 6, subsample_size=2, dim=-2):
            py = pyro.param("py", torch.linspace(-1, 1, 30).reshape(6, 5), event_dim=0)
            pyro.sample("y", dist.Normal(py, 0.5))


@pytest.mark.parametrize(
    "model, guide, elbo, args",
    [
        pytest.param(
            obs_mask_model, obs_mask_guide, Trace_ELBO, (torch.arange(4.0),), id="obs_mask"
        ),
        pytest.param(
            obs_mask_model,
            obs_mask_guide,
            _vectorized(TraceMeanField_ELBO, 3),
            (torch.arange(4.0),),
            id="obs_mask-mean-field-vectorized",
        ),
        pytest.param(
            nested_subsampled_model, nested_subsampled_guide, Trace_ELBO, (), id="nested-subsampled"
        ),
        pytest.param(
            nested_subsampled_model,
            nested_subsampled_guide,
            lambda: TraceMeanField_ELBO(
                max_plate_nesting=2, num_particles=3, vectorize_particles=True
            ),
            (),
            id="nested-subsampled-mean-field-vectorized",
        ),
    ],
)
def test_masked_and_nested_plates(model, guide, elbo, args, caplog):
    """``obs_mask`` (the masked entries a latent site the guide draws) and nested plates
    that draw their own subsamples: Pyro's loss and gradients on the same draws."""
    same_as_pyro(model, guide, elbo, [(args, {})] * 3, COMPILED, caplog)
