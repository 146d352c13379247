"""A density after ``.eval()`` (or ``.train()``) is that mode's, even for the same data tensor.

Why: several transforms compute something else in each mode (BatchNorm: batch or running
statistics; ResidualBlock: a random or an exact log-det; a user's conditioner with dropout),
but the cache of the last call is stamped with parameters and grad mode only. A program that
logs the training-mode likelihood of its data and then evaluates the same tensor in eval mode
(both under ``no_grad``, as one does) got the training-mode numbers back; Pyro's BatchNorm
(``cache_size=0``) gives the eval-mode density.
"""

from __future__ import annotations

import copy
import pickle

import pyro.distributions as dist
import pyro.distributions.transforms as PT
import pytest
import torch
from torch import nn

from pyro_gen import transforms as T

from .registry import CASES, Case
from .test_registry import _concrete, _context, _dtype_for, _prepare  # noqa: F401


def _standard(d: int, dtype: torch.dtype = torch.float32) -> dist.Distribution:
    return dist.Normal(torch.zeros(d, dtype=dtype), 1.0).to_event(1)


def _batchnorm_eval_density(bn: T.BatchNorm, y: torch.Tensor) -> torch.Tensor:
    """Closed form with the running statistics: x = (y - m) / sqrt(v + eps) e^g + b."""
    scale = torch.sqrt(bn.running_var + bn.eps)
    x = (y - bn.running_mean) / scale * bn.log_gamma.exp() + bn.beta
    return _standard(y.shape[-1]).log_prob(x) + (bn.log_gamma - scale.log()).sum()


def test_batchnorm_density_after_eval_uses_the_running_statistics() -> None:
    torch.manual_seed(0)
    bn = T.BatchNorm(2)
    flow = dist.TransformedDistribution(_standard(2), [bn])
    data = 3.0 + 2.0 * torch.randn(100, 2)
    with torch.no_grad():
        train_mode = flow.log_prob(data)  # batch statistics; moves the running averages
        bn.eval()
        eval_mode = flow.log_prob(data)
    torch.testing.assert_close(eval_mode, _batchnorm_eval_density(bn, data))
    # Pyro's BatchNorm, from the same running averages, gives the same eval-mode density
    pyro_bn = PT.BatchNorm(2, epsilon=bn.eps)
    with torch.no_grad():
        pyro_bn.gamma.fill_(1.0)
        pyro_bn.moving_mean.copy_(bn.running_mean)
        pyro_bn.moving_variance.copy_(bn.running_var)
    pyro_bn.eval()
    pyro_flow = dist.TransformedDistribution(_standard(2), [pyro_bn])
    with torch.no_grad():
        torch.testing.assert_close(eval_mode, pyro_flow.log_prob(data), rtol=1e-5, atol=1e-4)
    # the two modes differ here (running averages a tenth of the way to the data's), so the
    # check above could not pass with the training-mode value
    assert train_mode.mean() - eval_mode.mean() > 1.0


def test_batchnorm_back_in_training_mode_uses_the_batch_statistics_again() -> None:
    torch.manual_seed(1)
    bn = T.BatchNorm(3).eval()
    flow = dist.TransformedDistribution(_standard(3), [bn])
    data = -2.0 + 0.5 * torch.randn(50, 3)
    with torch.no_grad():
        flow.log_prob(data)  # eval mode: running averages (zero mean, unit variance)
        bn.train()
        z = bn.inv(data)
    # training mode standardizes the batch, whatever the running averages say
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


def test_residual_flow_density_after_eval_is_the_exact_one() -> None:
    # 8 features: training mode estimates the log-det (roulette), eval mode computes it exactly
    torch.manual_seed(2)
    block = T.residual_block(8, [16]).double()
    flow = dist.TransformedDistribution(_standard(8, torch.float64), [block])
    data = torch.randn(4, 8, dtype=torch.float64)
    with torch.no_grad():
        flow.log_prob(data)
        block.eval()
        got = flow.log_prob(data)
    x = block.inv(data.clone()).detach()
    jac = torch.stack([torch.autograd.functional.jacobian(block.inv, row) for row in data])
    exact = _standard(8, torch.float64).log_prob(x) + torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(got, exact, atol=1e-5, rtol=0)


class _DropoutHypernet(nn.Module):
    """A user's coupling conditioner with dropout: its output differs by mode."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.Dropout(0.5), nn.Linear(32, 4))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def test_coupling_with_a_dropout_conditioner_evaluates_without_dropout_after_eval() -> None:
    torch.manual_seed(3)
    layer = T.AffineCoupling(T.make_mask(4, "half"), _DropoutHypernet())
    flow = dist.TransformedDistribution(_standard(4), [layer])
    data = torch.randn(6, 4)
    with torch.no_grad():
        flow.log_prob(data)
        layer.eval()
        got = flow.log_prob(data)
        again = flow.log_prob(data.clone())  # no cache: eval mode computed afresh
    torch.testing.assert_close(got, again)


def test_the_twins_of_a_cached_compose_follow_the_mode_change() -> None:
    # ComposeTransformModule(cache_size=1) holds with_cache twins; .eval() reaches the
    # original modules, and through the shared flag the twins' caches
    torch.manual_seed(4)
    bn = T.BatchNorm(2, cache_size=0)
    compose = PT.ComposeTransformModule([T.ActNorm(2), bn], cache_size=1)
    assert compose.parts[1] is not bn
    flow = dist.TransformedDistribution(_standard(2), [compose])
    data = 5.0 + torch.randn(40, 2)
    with torch.no_grad():
        flow.log_prob(data)
        compose.eval()
        got = flow.log_prob(data)
        fresh = flow.log_prob(data.clone())
    torch.testing.assert_close(got, fresh)


def test_copies_and_pickles_follow_their_own_mode_changes() -> None:
    torch.manual_seed(5)
    data = 2.0 + torch.randn(30, 2)
    for clone in (copy.deepcopy(T.BatchNorm(2)), pickle.loads(pickle.dumps(T.BatchNorm(2)))):
        flow = dist.TransformedDistribution(_standard(2), [clone])
        with torch.no_grad():
            flow.log_prob(data)
            clone.eval()
            torch.testing.assert_close(flow.log_prob(data), _batchnorm_eval_density(clone, data))


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.invertible and not c.known_bug], ids=lambda c: c.name
)
@pytest.mark.usefixtures("_dtype_for")
def test_every_transform_scores_in_eval_mode_what_it_computes_afresh(case: Case) -> None:
    # the registry's transforms, each scored in training mode and then, the same tensor, in
    # eval mode: the values are eval mode's (those of a copy of the tensor, which no cache
    # holds), whatever the transform does differently in training mode
    t = _prepare(case)
    ct = _concrete(case, t, _context(case, 16))
    y = 2.0 + 1.5 * torch.randn(tuple(ct.forward_shape((16, *case.shape))), dtype=torch.float64)
    if isinstance(t, torch.nn.Module):
        t.train()
    with torch.no_grad():
        ct.log_abs_det_jacobian(ct.inv(y), y)
        if isinstance(t, torch.nn.Module):
            t.eval()
        x = ct.inv(y)
        ladj = ct.log_abs_det_jacobian(x, y)
        y_copy = y.clone()
        x_copy = ct.inv(y_copy)
        torch.testing.assert_close(x, x_copy)
        torch.testing.assert_close(ladj, ct.log_abs_det_jacobian(x_copy, y_copy))
