"""pyro_gen's distributions held to Pyro's scoring contract (``test_score_errors_*``,
``test_gof``): out-of-support and wrong-event-shape values raise ``ValueError`` also after
``expand`` (a plate expands every site's distribution), an explicit ``validate_args``
survives ``expand``, ``to_event`` / ``mask`` sum over the batch dim and zero what is masked,
pickling keeps the density, ``has_rsample`` says whether ``rsample`` works, and draws follow
``exp(log_prob)`` (asked by quadrature: unit mass and the draws' first and second moments
within five standard errors of the grid's).

Ported (read, not copied) from pyro-ppl/pyro ``tests/distributions/test_distributions.py``
and run over every distribution pyro_gen hands to ``pyro.sample`` (the cases in
pyro_distribution_cases.py): GaussianMixture (shared and batched parameters), MixturePrior,
VampPrior, Flow / FlowDistribution (plain, conditional, image-shaped, LearnedNormal /
LearnedMixture / ConditionalNormal bases), the VAE's NormalPrior / FlowPrior, the DDPM's
DiscretizedGaussian and the discrete VAE's ExpRelaxedCategorical."""

from __future__ import annotations

import math
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen import transforms as T
from pyro_gen.diffusion.likelihood import DiscretizedGaussian
from pyro_gen.distributions import FlowDistribution
from pyro_gen.distributions.mixture import GaussianMixture
from pyro_gen.vae.discrete import ExpRelaxedCategorical
from tests.distributions import pyro_distribution_cases
from tests.distributions.pyro_distribution_cases import _NO_DENSITY, CASES, D, K, _bad_value

# every distribution of the suite, one test each (the fixture is shared, found here by name)
case = pyro_distribution_cases.case


def test_score_errors_event_shape_and_non_broadcastable(case) -> None:
    with pyro.validation_enabled(True):
        for d in (case, case.expand((2,) + case.batch_shape)):
            # an Independent (to_event) leaves the event shape to its base, as in Pyro
            if d.event_shape and not isinstance(d, dist.Independent):
                with pytest.raises((ValueError, RuntimeError)):
                    d.log_prob(torch.ones(d.shape() + (1,)))
            # one more along the first dim that is not 1 (a 1 would broadcast)
            shape = list(d.shape())
            i = next(i for i, s in enumerate(shape) if s != 1)
            shape[i] += 1
            with pytest.raises((ValueError, RuntimeError)):
                d.log_prob(torch.ones(shape))


def test_validation_refuses_out_of_support_values_also_under_a_plate(case) -> None:
    with pyro.validation_enabled(True):
        with pytest.raises(ValueError):
            case.log_prob(_bad_value(case, case.shape()))
        # pyro.plate scores the expanded distribution: validation must survive expand
        large = case.expand((2,) + case.batch_shape)
        with pytest.raises(ValueError):
            large.log_prob(_bad_value(case, large.shape()))

        def model():
            with pyro.plate("data", 2, dim=-1 - len(case.batch_shape)):
                pyro.sample("x", case, obs=_bad_value(case, large.shape()))

        with pytest.raises(ValueError):
            pyro.poutine.trace(model).get_trace().compute_log_prob()


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize(
    "name", ["GaussianMixture", "DiscretizedGaussian", "ExpRelaxedCategorical", "FlowDistribution"]
)
def test_expand_keeps_an_explicit_validate_args(name, validate) -> None:
    # Pyro's expand copies _validate_args: validate_args=True refuses bad values under a
    # plate with global validation off, validate_args=False scores them with it on
    build = {
        "GaussianMixture": lambda v: GaussianMixture(
            torch.zeros(K), torch.randn(K, D), torch.ones(K, D), validate_args=v
        ),
        "DiscretizedGaussian": lambda v: DiscretizedGaussian(
            torch.zeros(3), torch.ones(3), validate_args=v
        ),
        "ExpRelaxedCategorical": lambda v: ExpRelaxedCategorical(
            torch.tensor(0.5), logits=torch.zeros(3, K), validate_args=v
        ),
        "FlowDistribution": lambda v: FlowDistribution(
            # Pyro leaves the base's flag to the base
            dist.Independent(dist.Normal(torch.zeros(D), 1.0, validate_args=v), 1, validate_args=v),
            [T.affine_coupling(D, hidden_dims=[8])],
            validate_args=v,
        ),
    }
    d = build[name](validate)
    large = d.expand((2,) + d.batch_shape)
    assert large._validate_args is validate
    bad = _bad_value(d, large.shape())
    with pyro.validation_enabled(not validate):
        if validate:
            with pytest.raises(ValueError):
                large.log_prob(bad)
        else:
            large.log_prob(bad)


def test_to_event_and_mask(case) -> None:
    large = case.expand((4,) + case.batch_shape)
    with torch.no_grad():
        x = large.sample()
        lp = large.log_prob(x)
        summed = large.to_event(1 + len(case.batch_shape)).log_prob(x)
        torch.testing.assert_close(summed, lp.sum())
        keep = torch.tensor([True, False, True, False]).reshape((4,) + (1,) * len(case.batch_shape))
        masked = large.mask(keep).log_prob(x)
        torch.testing.assert_close(masked, torch.where(keep, lp, torch.zeros_like(lp)))


def test_pickle_keeps_the_density(case) -> None:
    large = case.expand((2,) + case.batch_shape)
    with torch.no_grad():
        x = large.sample()
        back = pickle.loads(pickle.dumps(large))
        assert type(back) is type(large) and back.batch_shape == large.batch_shape
        torch.testing.assert_close(back.log_prob(x), large.log_prob(x))


def test_rsample_agrees_with_has_rsample(case) -> None:
    if case.has_rsample:
        x = case.rsample((5,))
        assert x.shape == (5,) + case.shape()
    else:
        with pytest.raises(NotImplementedError):
            case.rsample((5,))
        assert not case.sample((5,)).requires_grad


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if n not in _NO_DENSITY])
def test_samples_follow_the_density(name) -> None:
    # Pyro's test_gof asks the same (draws follow exp(log_prob)); its nearest-neighbour
    # test gives p < 1e-6 on exact heteroscedastic 2-D densities, so here: exp(log_prob)
    # integrates to one on a grid, and the draws' first and second moments agree with the
    # grid's within five standard errors, for each batch member
    torch.manual_seed(0)
    d = CASES[name]()
    n = 20000
    with torch.no_grad():
        x = d.sample((n,)).reshape(n, -1, D)
        half = 1.5 * x.abs().max().item()
        g = torch.linspace(-half, half, 301)
        pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, D)
        ones = (1,) * len(d.batch_shape)
        w = d.log_prob(pts.reshape((-1, *ones, D))).exp().reshape(len(pts), -1)
        w = w * (g[1] - g[0]) ** 2
    feats = lambda v: torch.cat([v, v**2, v.prod(-1, keepdim=True)], -1)  # noqa: E731
    for b in range(x.shape[1]):
        assert abs(w[:, b].sum().item() - 1) < 1e-2, b
        exact = (w[:, b, None] * feats(pts)).sum(0)
        f = feats(x[:, b])
        se = f.std(0) / math.sqrt(n)
        assert ((f.mean(0) - exact).abs() < 5 * se + 1e-3).all(), (b, f.mean(0), exact)
