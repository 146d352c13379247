"""Users' own models written with Pyro's ``obs_mask=`` idiom, with pyro_gen's VAE helpers.

``pyro.sample("x", d, obs=x, obs_mask=m)`` records three sites: ``x_observed`` (the data,
masked to the observed entries), ``x_unobserved`` (a latent, masked to the missing ones)
and a deterministic ``x`` merging both. Checked here:

- ``impute`` and ``reconstruct`` read ``x_observed`` as the data site without being told
  (the deterministic ``x`` is no observation), and ``impute``'s fill of a probabilistic PCA
  is the Gaussian conditional mean :math:`\\Sigma_{mo}\\Sigma_{oo}^{-1} x_o`, as with
  ``site="x_observed"`` named by hand, draw for draw;
- ``reconstruct`` is the model's mean :math:`W \\hat z` at the autoguide's median;
- an M2-style label sampled with ``obs_mask=`` and ``infer={"enumerate": ...}``: Pyro does
  not pass ``infer`` on to ``y_unobserved``, and ``AutoAmortizedNormal`` says so (its
  advice to enumerate read as already followed); under ``config_enumerate`` the guide
  covers ``z`` alone and its ``TraceEnum_ELBO`` equals the same model written with
  ``poutine.mask``, the unlabelled rows' label enumerated.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyro_gen.vae import AutoAmortizedNormal, impute, prior_guide, reconstruct

DZ, DX, SIG = 2, 4, 0.5


@pytest.fixture
def ppca():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(DX, DZ, generator=g)

    def model(x, mask=None):
        with pyro.plate("rows", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([DZ]).to_event(1))
            with pyro.plate("pixels", DX, dim=-1):
                pyro.sample("x", dist.Normal(z.squeeze(-2) @ W.T, SIG), obs=x, obs_mask=mask)

    x = torch.randn(3, DX, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    cov = W @ W.T + SIG**2 * torch.eye(DX)
    exact = x.clone()
    for i in range(x.shape[0]):
        o, m = mask[i], ~mask[i]
        exact[i, m] = cov[m][:, o] @ torch.linalg.solve(cov[o][:, o], x[i, o])
    return model, W, x, mask, exact


def test_impute_reads_the_observed_part_of_an_obs_mask_site(ppca):
    model, _, x, mask, exact = ppca
    pyro.set_rng_seed(0)
    found = impute(model, x, mask, guide=prior_guide(model), num_samples=20000)
    pyro.set_rng_seed(0)
    named = impute(model, x, mask, guide=prior_guide(model), num_samples=20000, site="x_observed")
    assert torch.equal(found, named)
    assert torch.equal(found[mask], x[mask])
    assert (found - exact).abs().max() < 0.03


def test_reconstruct_of_an_obs_mask_model_is_its_mean_at_the_guides_median(ppca):
    model, W, x, mask, _ = ppca
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoAmortizedNormal(model, hidden_dims=(4,))
    z = guide.median(x, mask=mask)["z"].squeeze(-2)
    out = reconstruct(model, x, guide=guide, mask=mask)
    torch.testing.assert_close(out, z @ W.T)


C, D = 3, 4


def _m2_pair():
    torch.manual_seed(0)
    decoder = torch.nn.Linear(DZ + C, D)

    def obs_mask_model(x, y, labelled):
        pyro.module("decoder", decoder)
        with pyro.plate("images", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([DZ]).to_event(1))
            label = pyro.sample(
                "y",
                dist.OneHotCategorical(torch.ones(C) / C),
                obs=y,
                obs_mask=labelled,
                infer={"enumerate": "parallel"},
            )
            z = z.expand(label.shape[:-1] + (DZ,))
            logits = decoder(torch.cat([z, label], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def masked_model(x, y, labelled):
        pyro.module("decoder", decoder)
        with pyro.plate("images", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([DZ]).to_event(1))
            prior = dist.OneHotCategorical(torch.ones(C) / C)
            with poutine.mask(mask=labelled):
                pyro.sample("y_observed", prior, obs=y)
            with poutine.mask(mask=~labelled):
                drawn = pyro.sample("y_unobserved", prior, infer={"enumerate": "parallel"})
            label = torch.where(labelled[:, None], y, drawn)
            z = z.expand(label.shape[:-1] + (DZ,))
            logits = decoder(torch.cat([z, label], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    x = torch.rand(6, D).round()
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), C).float()
    labelled = torch.tensor([True, True, False, False, True, False])
    return obs_mask_model, masked_model, (x, y, labelled)


def test_an_obs_mask_label_left_unenumerated_by_pyro_is_named_with_the_cause():
    model, _, batch = _m2_pair()
    pyro.clear_param_store()
    guide = AutoAmortizedNormal(model, hidden_dims=(4,))
    with pytest.raises(ValueError, match=r"unobserved part of 'y'.*config_enumerate"):
        guide(*batch)


def test_a_config_enumerated_obs_mask_label_is_summed_out_as_the_masked_model_does():
    model, masked_model, batch = _m2_pair()
    model = config_enumerate(model)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoAmortizedNormal(model, hidden_dims=(4,))
    guide(*batch)
    assert list(guide.local_sites) == ["z"]
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(1)
    loss = elbo.loss(model, guide, *batch)
    pyro.set_rng_seed(1)
    expected = elbo.loss(masked_model, guide, *batch)
    assert loss == pytest.approx(expected, rel=1e-6)
