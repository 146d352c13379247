"""Posterior diagnostics of a user's model guided by Pyro's own ``AutoNormal``.

``AutoNormal`` draws each latent as an auxiliary ``<name>_unconstrained`` Normal and records
the latent as a ``Delta``. ``kl_per_dim`` refused it ("needs diagonal Normal densities of
the latent in both the guide and the model"), though its q is exactly a diagonal Normal on
a real support; it now reads the auxiliary Normal. A positive latent (LogNormal prior) is
not its auxiliary draw, so it stays refused.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal, init_to_value

from pyro_gen.vae import kl_per_dim

X = torch.linspace(-1.0, 1.0, 12).reshape(6, 2)


def model(x):
    with pyro.plate("rows", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 2.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def positive_model(x):
    with pyro.plate("rows", x.shape[0]):
        s = pyro.sample("s", dist.LogNormal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(0.0, s).to_event(1), obs=x)


def test_kl_per_dim_of_autonormal_is_the_closed_form_of_its_normal():
    pyro.clear_param_store()
    locs = X * 0.5
    guide = AutoNormal(model, init_loc_fn=init_to_value(values={"z": locs}), init_scale=0.3)
    guide(X)
    expected = torch.distributions.kl_divergence(dist.Normal(locs, 0.3), dist.Normal(0.0, 2.0))
    got = kl_per_dim(model, X, guide=guide)
    assert torch.allclose(got, expected.mean(0), rtol=1e-5)


def test_a_positive_latent_of_autonormal_is_still_refused():
    pyro.clear_param_store()
    guide = AutoNormal(positive_model)
    guide(X)
    with pytest.raises(TypeError, match="per-dimension KL needs diagonal Normal densities"):
        kl_per_dim(positive_model, X, guide=guide)
