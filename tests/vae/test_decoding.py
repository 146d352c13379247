"""``reconstruct``, ``interpolate`` and ``reconstruction_grid`` on users' own Pyro programs.

Checked against: the closed form of a linear-Gaussian model (x = W z + b + noise, whose
decoded mean at the posterior mean is W E[z | x] + b); the same networks called by hand, as
Pyro's VAE tutorial's ``reconstruct_img`` does, in evaluation mode; a pyro_gen VAE's own
``reconstruct``/``decode`` (the general path must agree with it when handed the VAE's own
guide); linearity in the interpolation weight; and a model that observes labels beside the
data (an SSVAE's labelled batch, or a user's labelled model), decoded through its data site.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_gen.transforms import inverse_autoregressive
from pyro_gen.vae import SSVAE, VAE, interpolate, reconstruct, reconstruction_grid
from pyro_gen.vae.latent_statistics import latent_statistics

DZ, DX, SIG = 2, 5, 0.3


@pytest.fixture
def linear():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(DX, DZ, generator=g), torch.randn(DX, generator=g)
    S = torch.linalg.inv(torch.eye(DZ) + W.T @ W / SIG**2)  # posterior covariance

    def model(x):
        with pyro.plate("rows", x.shape[0]):
            z = pyro.sample("code", dist.Normal(0.0, 1.0).expand([DZ]).to_event(1))
            pyro.sample("obs", dist.Normal(z @ W.T + b, SIG).to_event(1), obs=x)

    def posterior_mean(x):
        return (x - b) @ W @ S.T / SIG**2

    def guide(x):  # the exact posterior
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("code", dist.MultivariateNormal(posterior_mean(x), S))

    x = torch.randn(6, DX, generator=g) * 2
    return model, guide, posterior_mean, W, b, x


def test_reconstruction_is_the_closed_form_decoded_posterior_mean(linear):
    model, guide, posterior_mean, W, b, x = linear
    expected = posterior_mean(x) @ W.T + b
    got = reconstruct(model, x, guide=guide)
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got - x).abs().max() > 0.1  # a reconstruction, not the data handed back


def test_a_flow_guide_is_reconstructed_at_the_mean_of_its_draws(linear):
    model, _, posterior_mean, W, b, x = linear
    flow = inverse_autoregressive(DZ, [8])  # zero-initialised: the identity at the start

    def flow_guide(x):
        pyro.module("flow", flow)
        with pyro.plate("rows", x.shape[0]):
            base = dist.Normal(posterior_mean(x), 0.1).to_event(1)
            pyro.sample("code", dist.TransformedDistribution(base, [flow]))

    pyro.set_rng_seed(0)
    state = torch.get_rng_state()
    got = reconstruct(model, x, guide=flow_guide, num_draws=400)
    assert torch.equal(torch.get_rng_state(), state)  # the draws are not the caller's
    expected = posterior_mean(x) @ W.T + b
    # the mean of 400 draws of scale 0.1, through W (entries about 1): within a few 0.005
    assert (got - expected).abs().max() < 0.05


def test_interpolation_of_a_linear_model_is_the_straight_line(linear):
    model, guide, posterior_mean, W, b, x = linear
    line = interpolate(model, x[0], x[1], 5, guide=guide)
    ends = posterior_mean(x[:2]) @ W.T + b
    t = torch.linspace(0, 1, 5)[:, None]
    assert line.shape == (5, DX)
    assert torch.allclose(line, (1 - t) * ends[0] + t * ends[1], atol=1e-5)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5))
        self.loc, self.scale = nn.Linear(32, 3), nn.Linear(32, 3)

    def forward(self, x):
        h = self.body(x)
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-3


def tutorial_vae():
    """Pyro's VAE tutorial, in small: pyro.module networks, an inline prior, dropout."""
    encoder = Encoder()
    decoder = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 16))

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
            probs = torch.sigmoid(decoder(z))
            pyro.sample("obs", dist.Bernoulli(probs).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))

    return model, guide, encoder, decoder


def test_a_tutorial_vae_is_reconstructed_by_its_networks_in_evaluation_mode():
    pyro.clear_param_store()
    model, guide, encoder, decoder = tutorial_vae()
    x = torch.rand(8, 16).round()
    got = reconstruct(model, x, guide=guide)
    assert encoder.training and decoder.training  # restored afterwards
    encoder.eval(), decoder.eval()
    with torch.no_grad():
        expected = torch.sigmoid(decoder(encoder(x)[0]))
    assert torch.allclose(got, expected, atol=1e-6)
    grid = reconstruction_grid(model, x, nrow=4, guide=guide, image_shape=(4, 4))
    assert grid.shape == (4 * 5 - 1, 4 * 5 - 1)  # 2 rows of originals, 2 of reconstructions
    assert torch.allclose(grid[5:9, :4], expected[0].reshape(4, 4), atol=1e-6)


def test_the_general_path_agrees_with_a_pyro_gen_vaes_own_decoder():
    torch.manual_seed(0)
    vae = VAE((4, 4), z_dim=3, hidden_dim=16)
    x = torch.rand(5, 4, 4).round()
    own = vae.reconstruct(x)
    assert torch.allclose(reconstruct(vae, x, guide=vae.guide), own, atol=1e-5)
    line = interpolate(vae, x[0], x[1], 4)
    assert torch.allclose(interpolate(vae, x[0], x[1], 4, guide=vae.guide), line, atol=1e-5)
    assert torch.allclose(line[[0, -1]], own[:2], atol=1e-5)


def two_level():
    """z1 -> z2 -> x, a two-level local hierarchy with a matching guide."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(z1, 0.5).to_event(1))
            pyro.sample("x", dist.Normal(z2.repeat(1, 2), 0.1).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x[:, :2] / 2, 0.3).to_event(1))
            pyro.sample("z2", dist.Normal(z1 + x[:, 2:] / 2, 0.1).to_event(1))

    return model, guide


def test_a_hierarchy_interpolates_every_layer_or_the_one_named():
    model, guide = two_level()
    x = torch.tensor([[2.0, 0.0, 2.0, 0.0], [0.0, 4.0, 0.0, 4.0]])
    # points: z1 = x[:, :2] / 2, z2 = z1 + x[:, 2:] / 2 = x[:, :2]: the reconstruction is x
    assert torch.allclose(reconstruct(model, x, guide=guide), x)
    line = interpolate(model, x[0], x[1], 3, guide=guide)
    assert torch.allclose(line[1], (x[0] + x[1]) / 2)
    pyro.set_rng_seed(0)
    top = interpolate(model, x[0], x[1], 3, guide=guide, latent="z1")
    # z2 now drawn from the model around the line of z1 (scale 0.5): noisy, centred on it
    z1_mid = (x[0, :2] + x[1, :2]) / 4
    assert (top[1, :2] - z1_mid).abs().max() < 2.5
    assert not torch.allclose(top[1], line[1], atol=1e-3)
    with pytest.raises(ValueError, match=r"latent='w' is not a latent site .* \['z1', 'z2'\]"):
        interpolate(model, x[0], x[1], 3, guide=guide, latent="w")


def test_a_global_latent_stays_at_its_point_estimate():
    def model(x):
        shift = pyro.sample("shift", dist.Normal(0.0, 10.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            loc = (z + shift).unsqueeze(-1).expand(-1, 2)
            pyro.sample("x", dist.Normal(loc, 0.1).to_event(1), obs=x)

    def guide(x):
        pyro.sample("shift", dist.Normal(3.0, 0.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.mean(-1) - 3.0, 0.1))

    x = torch.tensor([[1.0, 3.0], [5.0, 5.0]])
    assert torch.allclose(reconstruct(model, x, guide=guide), torch.tensor([[2.0] * 2, [5.0] * 2]))
    line = interpolate(model, x[0], x[1], 4, guide=guide)
    assert torch.allclose(line[:, 0], torch.tensor([2.0, 3.0, 4.0, 5.0]))


def test_discrete_latents_and_means_without_a_closed_form_are_named():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(torch.ones(3) / 3))
            pyro.sample("x", dist.Categorical(logits=torch.eye(3)[y]), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=torch.eye(3)[x.long()]))

    x = torch.tensor([0.0, 2.0])
    with pytest.raises(ValueError, match="'y' is discrete and cannot be interpolated"):
        interpolate(model, x[0], x[1], 3, guide=guide)
    with pytest.raises(ValueError, match="site 'x', whose Categorical distribution has no"):
        reconstruct(model, x, guide=guide)


def test_flat_examples_need_an_image_shape_for_a_grid():
    model, guide, *_ = tutorial_vae()
    with pytest.raises(ValueError, match=r"got \(8, 16\): reshape flat examples"):
        reconstruction_grid(model, torch.rand(4, 16).round(), guide=guide)


def test_the_posterior_diagnostics_run_a_users_dropout_in_evaluation_mode():
    pyro.clear_param_store()
    model, guide, encoder, _ = tutorial_vae()
    x = torch.rand(8, 16).round()
    mean, _ = latent_statistics(model, x, guide=guide)
    assert encoder.training  # restored afterwards
    encoder.eval()
    with torch.no_grad():
        assert torch.allclose(mean, encoder(x)[0], atol=1e-6)
        encoder.train()
        assert not torch.allclose(mean, encoder(x)[0], atol=1e-3)  # dropout would show


class TutorialModule(nn.Module):
    """Pyro's VAE tutorial's layout: one module with model/guide methods, and (here) an
    encode method of its own meaning, which the helpers must not take for pyro_gen's."""

    def __init__(self):
        super().__init__()
        self.model_fn, self.guide_fn, self.encoder, self.decoder = tutorial_vae()

    def encode(self, x):
        return self.encoder(x)  # (loc, scale): not a tensor of codes

    def decode(self, z):
        return torch.sigmoid(self.decoder(z))

    def model(self, x):
        return self.model_fn(x)

    def guide(self, x):
        return self.guide_fn(x)


def test_a_users_module_with_model_and_guide_methods_is_read_through_them():
    pyro.clear_param_store()
    vae = TutorialModule()
    x = torch.rand(4, 16).round()
    line = interpolate(vae, x[0], x[1], 3)
    grid = reconstruction_grid(vae, x, nrow=4, image_shape=(4, 4))
    vae.eval()
    with torch.no_grad():
        ends = vae.decode(vae.encode(x[:2])[0])
    assert torch.allclose(line[[0, -1]], ends, atol=1e-6)
    assert torch.allclose(grid[5:9, :4], ends[0].reshape(4, 4), atol=1e-6)


def labelled_model(x: torch.Tensor, y: torch.Tensor) -> None:
    """z ~ N(0, 1); the label y is observed beside x ~ N(2 z + y, 0.1^2) in the data plate."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Categorical(logits=torch.zeros(3)), obs=y)
        loc = (2 * z + y.to(z.dtype)).unsqueeze(-1).expand(z.shape + (2,))
        pyro.sample("x", dist.Normal(loc, 0.1).to_event(1), obs=x)


def labelled_guide(x: torch.Tensor, y: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal((x.mean(-1) - y) / 2, 0.05))


def test_reconstruct_reads_the_site_observing_x_when_labels_are_observed_beside_it():
    # it asked for site=... though only one of the two observed sites observes x
    x = torch.tensor([[1.0, 3.0], [0.0, 4.0]])
    y = torch.tensor([0, 2])
    got = reconstruct(labelled_model, x, guide=labelled_guide, y=y)
    # at the guide's mean z = (mean(x) - y) / 2 the model's mean is 2 z + y = mean(x)
    torch.testing.assert_close(got, x.mean(-1, keepdim=True).expand(-1, 2))


def test_interpolate_decodes_through_a_labelled_model_too():
    x_a, x_b = torch.tensor([1.0, 3.0]), torch.tensor([4.0, 6.0])
    y = torch.tensor([1])
    path = interpolate(labelled_model, x_a, x_b, steps=3, guide=labelled_guide, y=y)
    # z runs from (2 - 1) / 2 to (5 - 1) / 2; the model's mean 2 z + 1 from 2 to 5
    torch.testing.assert_close(path, torch.tensor([[2.0, 2.0], [3.5, 3.5], [5.0, 5.0]]))


def test_reconstruct_of_an_ssvae_labelled_batch_equals_naming_the_data_site():
    pyro.clear_param_store()
    torch.manual_seed(0)
    m2 = SSVAE((6,), num_classes=3, z_dim=2, hidden_dims=(8,))
    x = torch.rand(5, 6).round()
    y = torch.tensor([0, 1, 2, 0, 1])
    named = reconstruct(m2, x, y=y, site="x")
    torch.testing.assert_close(reconstruct(m2, x, y=y), named)
    assert not torch.equal(reconstruct(m2, x, y=(y + 1) % 3), named)  # the label is used


def test_two_observed_sites_that_both_observe_x_still_ask_for_site():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("a", dist.Normal(z, 1.0).expand([2]).to_event(1), obs=x)
            pyro.sample("b", dist.Normal(z, 2.0).expand([2]).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"observes \['a', 'b'\].*site="):
        reconstruct(model, torch.zeros(2, 2), guide=guide)
