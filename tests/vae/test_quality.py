"""Quality on real data: sklearn's 8x8 digits, trained through pyro_gen.infer.fit."""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_gen.data import load, static_binarize
from pyro_gen.infer import evaluate_elbo, fit
from pyro_gen.vae import (
    VAE,
    active_units,
    check_posterior_collapse,
    interpolate,
    iwae,
    kl_per_dim,
    reconstruction_grid,
    semi_amortized_elbo,
)


@pytest.fixture(scope="module")
def digits():
    x_train, _ = load("digits", "train")
    x_test, y_test = load("digits", "test")
    return (
        static_binarize(x_train.float() / 16, seed=0),
        static_binarize(x_test.float() / 16, seed=1),
        y_test,
    )


@pytest.fixture(scope="module")
def trained(digits):
    x_train, _, _ = digits
    pyro.set_rng_seed(0)
    vae = VAE((8, 8), z_dim=8, hidden_dim=128)
    fit(
        vae, x_train, epochs=30, batch_size=100, optim=pyro.optim.Adam({"lr": 3e-3}), progress=False
    )
    return vae


def test_standard_vae_reaches_elbo_threshold(trained, digits):
    _, x_test, _ = digits
    pyro.set_rng_seed(1)
    untrained = evaluate_elbo(VAE((8, 8), z_dim=8, hidden_dim=128), x_test)
    elbo = evaluate_elbo(trained, x_test, num_particles=10)
    # 30 epochs reach about -25.2 nats per 8x8 binarized digit (untrained: about -44)
    assert elbo > -26.0, elbo
    assert elbo > untrained + 15
    bound = -iwae(50).loss(trained.model, trained.guide, x_test) / x_test.shape[0]
    assert elbo < bound < elbo + 3
    # semi-amortized refinement tightens the bound on a batch
    batch = x_test[:64]
    amortized = evaluate_elbo(trained, batch, num_particles=100)
    refined = semi_amortized_elbo(trained, batch, num_steps=50, lr=1e-2)
    assert refined > amortized


def test_diagnostics_on_trained_vae(trained, digits):
    _, x_test, _ = digits
    n, activity = active_units(trained, x_test)
    assert 3 <= n <= 8 and activity.shape == (8,)
    kl = kl_per_dim(trained, x_test)
    assert kl.shape == (8,) and (kl >= 0).all()
    # active units carry the KL
    inactive = kl[activity <= 0.01]
    assert kl[activity > 0.01].min() > (inactive.max() if inactive.numel() else 0.0)
    stats = check_posterior_collapse(trained, x_test)
    assert not stats["collapsed"]
    assert interpolate(trained, x_test[0], x_test[1], 6).shape == (6, 8, 8)
    assert reconstruction_grid(trained, x_test[:8], nrow=4).shape == (4 * 9 - 1, 4 * 9 - 1)


def test_collapse_warning_on_collapsed_encoder(digits):
    _, x_test, _ = digits
    vae = VAE((8, 8), z_dim=4, hidden_dim=16)
    with torch.no_grad():  # an encoder that ignores x: the collapsed posterior
        vae.posterior.encoder.loc.weight.zero_()
    from pyro_gen.vae import PosteriorCollapseWarning

    with pytest.warns(PosteriorCollapseWarning, match="0 of 4"):
        assert check_posterior_collapse(vae, x_test)["collapsed"]
