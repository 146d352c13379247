"""Which model/guide joints ``iwae_log_likelihood`` may exponentiate: importance weights must
be densities over each example's whole latent trajectory, so a joint that estimates a bound
(a DDPM's time plate, a scaled or subsampled site) is refused, while ``evaluate_elbo``,
which is linear in the log-weights, keeps scoring it."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyro_gen.diffusion import DDPM
from pyro_gen.infer import evaluate_elbo, iwae_log_likelihood


class ZeroNet(torch.nn.Module):
    """Predicts x_0 = 0: every reverse step is then N(c_t x_t, s_t^2), so the generative
    chain is a linear Gaussian one whose marginal p(x_0) is known in closed form."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def _ddpm(**kwargs) -> DDPM:
    return DDPM(ZeroNet(), (1,), "linear", timesteps=3, param="x0", **kwargs)


def _chain_marginal_variance(m: DDPM) -> float:
    """Var x_0 of the chain x_T ~ N(0, 1), x_{t-1} | x_t ~ N(c_t x_t, s_t^2), reading c_t and
    s_t^2 off the model's own reverse step (its mean at x_t = 1)."""
    var = 1.0
    for t in range(m.schedule.num_timesteps, 0, -1):
        step = m.p_mean_logvar(torch.ones(1, 1), t)
        var = float(step["mean"]) ** 2 * var + float(step["log_var"].exp())
    return var


@pytest.mark.parametrize("time_samples", [1, 3])
def test_a_time_plate_ddpm_is_refused_and_its_full_chain_gives_the_exact_likelihood(
    time_samples,
):
    torch.manual_seed(0)
    plate = _ddpm(time_samples=time_samples)
    std = _chain_marginal_variance(plate) ** 0.5
    x = std * torch.tensor([[-1.0], [-0.3], [0.4], [1.0]])
    # The time plate samples (and reweights) steps independently: exp of its joint is no
    # importance weight (a DDPM on moons read +539 nats beside a test ELBO of -2.9).
    with pytest.raises(ValueError, match=r"not a density.*evaluate_elbo.*chain_model"):
        iwae_log_likelihood(plate, x, num_samples=8)
    exact = dist.Normal(0.0, std).log_prob(x[:, 0]).double()
    assert evaluate_elbo(plate, x) < float(exact.mean())  # the bound it estimates is scored
    # The full chain's joint is a density over the whole trajectory: a valid IWAE, which
    # tightens the ELBO (by 0.4 nats here) up to the closed-form log p(x_0) of the chain.
    chain = _ddpm(form="full_chain")
    for model, guide in ((plate.chain_model, plate.chain_guide), (chain, None)):
        iwae = iwae_log_likelihood(model, x, guide=guide, num_samples=2000, per_example=True)
        assert torch.allclose(iwae, exact, atol=0.05), (iwae, exact)
    assert evaluate_elbo(chain, x, num_particles=200) < float(exact.mean()) - 0.2


def test_scaled_sites_are_refused_by_iwae_and_kept_by_the_elbo():
    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with poutine.scale(scale=2.0):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))

    x = torch.linspace(-1.0, 1.0, 5)
    with pytest.raises(ValueError, match=r"site 'x'.*scale 2.*evaluate_elbo"):
        iwae_log_likelihood(model, x, guide=guide, num_samples=4)
    assert evaluate_elbo(model, x, guide=guide) < 0


def test_an_inner_subsampled_plate_is_refused_by_iwae_but_not_a_subsampled_data_plate():
    def model(x: torch.Tensor) -> None:
        with (
            pyro.plate("data", x.shape[0], dim=-2),
            pyro.plate("features", x.shape[1], subsample_size=2, dim=-1) as idx,
        ):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[:, idx])

    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"site 'x'.*scale 2.*plate 'features'"):
        iwae_log_likelihood(model, x, guide=lambda x: None, num_samples=2, plate_name="data")

    def minibatch(x: torch.Tensor) -> None:  # the data plate's own N/B is removed
        with pyro.plate("data", 100, subsample=torch.arange(x.shape[0])):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    got = iwae_log_likelihood(minibatch, x[:, 0], guide=lambda x: None, num_samples=2)
    assert got == pytest.approx(float(dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.0))))


def _normal_model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.1), obs=x)


def test_a_point_mass_guide_is_refused_by_iwae_and_flagged_by_the_elbo():
    # AutoDelta's "IWAE" was log p(x, z*): with a posterior narrower than 1/sqrt(2 pi) it
    # lies above log p(x), here by 1.4 nats per example at the posterior mode
    x = torch.linspace(-1.0, 1.0, 5)
    guide = AutoDelta(_normal_model, init_loc_fn=lambda site: x / 1.01)  # the exact mode
    with pytest.raises(ValueError, match=r"guide sites \['z'\] are point masses.*no bound"):
        iwae_log_likelihood(_normal_model, x, guide=guide, num_samples=4)
    with pytest.warns(UserWarning, match=r"\['z'\] are point masses.*not a lower bound"):
        joint = evaluate_elbo(_normal_model, x, guide=guide)
    exact = dist.Normal(0.0, 1.01**0.5).log_prob(x).mean()
    assert joint > exact + 1.0  # why it is flagged: log p(x, z*) above log p(x)
    # AutoNormal's Delta sites carry their density through an auxiliary site: no flag
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iwae_log_likelihood(
            _normal_model, x, guide=AutoNormal(_normal_model), num_samples=4, plate_name="data"
        )


def test_an_implicit_model_is_refused_by_both_estimators():
    # a GAN generator observes its data through a Delta: both estimates were -inf, with a
    # warning that called the prior proposal "a valid but looser bound"
    def generator(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Delta(2 * z, event_dim=1), obs=x)

    x = torch.randn(6, 2)
    for estimate in (evaluate_elbo, iwae_log_likelihood):
        with pytest.raises(ValueError, match=r"observed site 'x' is a Delta.*implicit.*samples"):
            estimate(generator, x, guide=lambda x: None)


def _score_model():
    from pyro_gen.diffusion import VPSDE, ScoreModel
    from pyro_gen.nn import TimeMLP

    return ScoreModel(TimeMLP(2, 16, num_layers=1), VPSDE(), (2,))


def _flow_matching():
    from pyro_gen.diffusion import FlowMatching
    from pyro_gen.transforms.continuous import cnf

    return FlowMatching(cnf(2, (8,), rtol=1e-3, atol=1e-3))


@pytest.mark.parametrize("build", [_score_model, _flow_matching], ids=["score", "flow_matching"])
def test_score_and_flow_matching_objectives_are_refused_by_iwae(build):
    """Their model/guide pair on data is a loss at sampled times (one time sample, no
    poutine.scale to flag): an IWAE of it read -0.54 nats where the exact value was -9.73."""
    pyro.clear_param_store()
    m = build()
    x = torch.randn(6, 2)
    with pytest.raises(ValueError, match="joint_is_density is False"):
        iwae_log_likelihood(m, x, num_samples=4)
    assert torch.isfinite(torch.tensor(evaluate_elbo(m, x)))  # the objective it estimates


def test_fit_scores_held_out_data_of_a_score_model_by_its_declared_plate():
    """Its time-sample plate encloses every site as its data plate does; the module names
    the data plate, so held-out evaluation needs no plate_name."""
    from pyro_gen.infer import fit

    pyro.clear_param_store()
    m, x = _score_model(), torch.randn(8, 2)
    result = fit(m, x, eval_data=x, epochs=1, batch_size=8, progress=False)
    assert math.isfinite(result.history[-1]["test_elbo"])
