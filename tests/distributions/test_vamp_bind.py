"""VampPrior.bind (and encode=) try the encoder once: a guide whose encode has the wrong
signature, refuses the prior's event shape or returns the wrong shapes is refused then, with
what to change, instead of failing obscurely inside the first step."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import nn

from pyro_gen.distributions.vamp import VampPrior
from pyro_gen.vae import AutoAmortizedNormal

X, Z = 4, 2


def _guide(encode):
    return type("Guide", (), {"encode": staticmethod(encode)})()


def _model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.0, 1.0).expand([Z]).to_event(1))


def _ones(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape[0], Z)


@pytest.mark.parametrize(
    "guide, match",
    [
        (lambda: AutoAmortizedNormal(_model, hidden_dims=(4,)), "autoguide's encode"),
        (lambda: AutoNormal(_model), "AutoNormal has none"),
        (lambda: _guide(lambda x, y: (x[:, :Z], _ones(x))), r"signature is \(x, y\)"),
        (lambda: _guide(lambda x: (x[:, :Z], torch.ones(3))), r"shape \(3,\)"),
        (lambda: _guide(lambda x: x[:, :Z]), r"\(loc, scale\)"),
        (lambda: _guide(lambda x: (x[0, :Z], torch.ones(Z))), r"\(K, z_dim\)"),
        (lambda: _guide(lambda x: {"z": x}), "returned dict"),
        (lambda: _guide(lambda x: (nn.Linear(X + 1, Z)(x), _ones(x))), "event_shape"),
    ],
)
def test_a_guide_the_prior_cannot_use_is_refused_at_bind_saying_why(guide, match):
    prior = VampPrior((X,), num_components=3)
    with pytest.raises(TypeError, match=match):
        prior.bind(guide())
    with pytest.raises(RuntimeError, match="bind"):  # nothing was bound
        prior()


def test_encode_passed_to_the_constructor_is_checked_too():
    with pytest.raises(TypeError, match=r"encode must return \(loc, scale\)"):
        VampPrior((X,), num_components=3, encode=lambda u: u[:, :Z])


def test_an_encode_with_optional_arguments_binds_and_scores_as_the_mean_of_its_posteriors():
    def encode(x, context=None):
        return x[:, :Z] * 2, _ones(x) * 0.5

    prior = VampPrior((X,), num_components=3)
    prior.bind(_guide(encode))
    z = torch.randn(5, Z)
    loc, scale = encode(prior.pseudo_inputs())
    direct = dist.Normal(loc, scale).to_event(1).log_prob(z[:, None]).logsumexp(-1)
    torch.testing.assert_close(prior().log_prob(z), direct - torch.tensor(3.0).log())


def test_a_dtype_mismatch_at_bind_is_left_for_prior_to_fix():
    """A float64 encoder bound before the prior is moved: bind must not refuse it."""
    linear = nn.Linear(X, Z).double()
    prior = VampPrior((X,), num_components=3)
    # the float32 pseudo-inputs fail the float64 layer: deferred to the first call
    prior.bind(_guide(lambda x: (linear(x), _ones(x).to(x.dtype))))
    with pytest.raises(TypeError, match="one dtype"):
        prior()
    prior.double()
    assert prior().log_prob(torch.zeros(2, Z, dtype=torch.float64)).dtype == torch.float64


def test_the_trial_call_changes_no_batch_norm_statistics_and_keeps_train_mode():
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(X, 8), nn.BatchNorm1d(8), nn.Linear(8, 2 * Z))

        def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            loc, raw = self.net(x).chunk(2, -1)
            return loc, nn.functional.softplus(raw)

    guide = Encoder()
    before = {k: v.clone() for k, v in guide.state_dict().items()}
    VampPrior((X,), num_components=1).bind(guide)  # one row would fail batch norm in train
    assert guide.training and all(m.training for m in guide.modules())
    after = guide.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_users_pyro_vae_with_its_own_encoder_module_trains_with_the_bound_prior():
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(X, 2 * Z)

        def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            loc, raw = self.net(x).chunk(2, -1)
            return loc, nn.functional.softplus(raw) + 1e-3

    encoder, decoder = Encoder(), nn.Linear(Z, X)
    prior = VampPrior((X,), num_components=4)
    prior.bind(encoder)

    def model(x):
        pyro.module("decoder", decoder)
        pyro.module("prior", prior)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", prior())
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*encoder.encode(x)).to_event(1))

    pyro.clear_param_store()
    x = torch.rand(6, X).round()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    raw = prior.pseudo_inputs_raw.detach().clone()
    losses = [svi.step(x) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(raw, prior.pseudo_inputs_raw)  # the prior trains through the guide


def test_a_conditional_vae_with_a_vamp_prior_is_refused_when_built():
    """It failed at the first step (NotImplementedError), and with the bind-time check at
    bind, inside the conditional encoder; now one error at construction says why."""
    from pyro_gen.vae import VAE

    with pytest.raises(ValueError, match=r"conditional VAE \(num_classes=3\)"):
        VAE((8, 8), 2, 8, prior=VampPrior((8, 8), 5), num_classes=3)
