"""pyro_gen's distributions held to Pyro's shape contract (``test_support_shape``,
``test_batch_log_prob_shape``, ``test_expand_*``, ``test_subsequent_expands_ok``,
``test_expand_error``): ``torch.Size`` batch/event shapes, ``sample_shape + batch_shape +
event_shape`` samples inside the support, ``log_prob`` of values with extra leading dims per
row, and ``expand`` (the expanded density is the small one broadcast, expanding an expanded
one, and the shapes Pyro refuses).

Ported (read, not copied) from pyro-ppl/pyro ``tests/distributions/test_distributions.py``
and run over every distribution pyro_gen hands to ``pyro.sample`` (the cases in
pyro_distribution_cases.py): GaussianMixture (shared and batched parameters), MixturePrior,
VampPrior, Flow / FlowDistribution (plain, conditional, image-shaped, LearnedNormal /
LearnedMixture / ConditionalNormal bases), the VAE's NormalPrior / FlowPrior, the DDPM's
DiscretizedGaussian and the discrete VAE's ExpRelaxedCategorical."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

from tests.distributions import pyro_distribution_cases
from tests.distributions.pyro_distribution_cases import _check_sample_shapes

# every distribution of the suite, one test each (the fixture is shared, found here by name)
case = pyro_distribution_cases.case


def test_shapes_support_and_log_prob_shape(case) -> None:
    assert type(case.batch_shape) is torch.Size and type(case.event_shape) is torch.Size
    assert case.support.event_dim == case.event_dim
    with torch.no_grad():
        for sample_shape in [(), (5,), (2, 3)]:
            x = case.sample(sample_shape)
            assert x.shape == torch.Size(sample_shape) + case.batch_shape + case.event_shape
            ok = case.support.check(x)
            assert ok.shape == torch.Size(sample_shape) + case.batch_shape and bool(ok.all())
            assert case.log_prob(x).shape == torch.Size(sample_shape) + case.batch_shape
            assert bool(torch.isfinite(case.log_prob(x)).all())


def test_log_prob_of_extra_leading_dims_is_per_row(case) -> None:
    with torch.no_grad():
        x = case.sample((3, 2))
        whole = case.log_prob(x)
        rows = torch.stack(
            [torch.stack([case.log_prob(x[i, j]) for j in range(2)]) for i in range(3)]
        )
        torch.testing.assert_close(whole, rows)
        # a singleton leading dim broadcasts against the batch shape (vectorized particles)
        one = case.log_prob(x[:1, :1])
        assert one.shape == (1, 1) + case.batch_shape


# ----------------------------------------------------------------------------- expand


@pytest.mark.parametrize("sample_shape", [(2,), (2, 3)])
def test_expand_new_dims_and_expand_by(case, sample_shape) -> None:
    large = case.expand(torch.Size(sample_shape) + case.batch_shape)
    assert large.batch_shape == torch.Size(sample_shape) + case.batch_shape
    assert type(large) is type(case) and type(large.batch_shape) is torch.Size
    _check_sample_shapes(case, large)
    by = case.expand_by(list(sample_shape))
    assert by.batch_shape == large.batch_shape
    _check_sample_shapes(case, by)
    # Pyro's default expand (an ExpandedDistribution around the small one) agrees
    wrapped = dist.TorchDistribution.expand(case, large.batch_shape)
    _check_sample_shapes(case, wrapped)


def test_expand_existing_dim(case) -> None:
    for i, size in enumerate(case.batch_shape):
        if size == 1:
            shape = list(case.batch_shape)
            shape[i] = 5
            large = case.expand(tuple(shape))
            assert large.batch_shape == torch.Size(shape)
            _check_sample_shapes(case, large)


@pytest.mark.parametrize("shapes", [[(2, 1), (2, 3)], [(2, 1, 1), (2, 1, 3), (2, 5, 3)]])
def test_subsequent_expands(case, shapes) -> None:
    d = case
    for shape in shapes:
        n = d.expand(torch.Size(shape) + case.batch_shape)
        assert n.batch_shape == torch.Size(shape) + case.batch_shape
        _check_sample_shapes(d, n)
        d = n


@pytest.mark.parametrize(
    "initial, proposed", [[(2, 1), (4, 3)], [(2, 4), (2, 2, 1)], [(1, 2, 1), (2, 1)]]
)
def test_expand_refuses_what_pyro_refuses(case, initial, proposed) -> None:
    large = case.expand(torch.Size(initial) + case.batch_shape)
    with pytest.raises((RuntimeError, ValueError)):
        large.expand(torch.Size(proposed) + case.batch_shape)


def test_expand_to_a_shape_the_batch_does_not_broadcast_to_is_refused(case) -> None:
    if not case.batch_shape or case.batch_shape[-1] == 1:
        pytest.skip("needs a batch dim larger than one")
    # (3,) cannot become (2, 1): Pyro's expand raises; it must not return (2, 3)
    with pytest.raises((RuntimeError, ValueError)):
        case.expand(case.batch_shape[:-1] + (2, 1))
