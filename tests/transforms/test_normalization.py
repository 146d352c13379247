"""ActNorm and BatchNorm: right in training and eval mode, both directions."""

from __future__ import annotations

import torch
from pyro.distributions.transforms import BatchNorm as PyroBatchNorm
from torch.autograd.functional import jacobian

from pyro_gen.transforms import ActNorm, BatchNorm


def _slogdet(fn, x: torch.Tensor) -> torch.Tensor:
    J = jacobian(lambda v: fn(v.reshape(x.shape)).reshape(-1), x.reshape(-1))
    return torch.linalg.slogdet(J)[1]


def _perturbed_bn(shape, eps: float = 1e-12) -> BatchNorm:
    # tiny eps so normalised statistics can be checked to float64 precision
    bn = BatchNorm(shape, eps=eps).double()
    with torch.no_grad():
        bn.log_gamma.normal_(0, 0.3)
        bn.beta.normal_(0, 0.3)
    return bn


def test_batchnorm_train_mode_uses_batch_stats_and_matching_logdet() -> None:
    bn = _perturbed_bn(3)
    y = 5.0 + 3.0 * torch.randn(512, 3, dtype=torch.float64)
    x = bn.inv(y)
    # normalised by the batch: per-feature mean beta, std exp(log_gamma)
    torch.testing.assert_close(x.mean(0), bn.beta.detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), bn.log_gamma.exp().detach())
    ladj = bn.log_abs_det_jacobian(x, y)
    # running averages moved towards the batch statistics (momentum 0.1, unbiased var)
    torch.testing.assert_close(bn.running_mean, 0.1 * y.mean(0))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * y.var(0))
    # the log-det is that of the per-example map with the batch statistics frozen
    frozen = _perturbed_bn(3)
    frozen.load_state_dict(bn.state_dict())
    frozen.running_mean.copy_(y.mean(0))
    frozen.running_var.copy_(y.var(0, unbiased=False))
    frozen.eval()
    torch.testing.assert_close(frozen.inv(y), x)
    ref = -_slogdet(frozen.inv, y[0])  # log|dy/dx| = -log|dx/dy|
    torch.testing.assert_close(ladj, ref.expand(512))


def test_batchnorm_train_mode_forward_logdet_matches_autograd() -> None:
    # sampling in training mode goes through running statistics; its log-det must say so
    bn = _perturbed_bn((2, 2, 2))
    bn.inv(1.0 + 2.0 * torch.randn(64, 2, 2, 2, dtype=torch.float64))  # update stats
    bn.train()
    x = torch.randn(2, 2, 2, dtype=torch.float64)
    y = bn(x)
    torch.testing.assert_close(bn.log_abs_det_jacobian(x, y), _slogdet(bn, x))


def test_batchnorm_image_statistics_are_per_channel() -> None:
    bn = BatchNorm((2, 3, 3), eps=1e-12).double()
    y = torch.randn(64, 2, 3, 3, dtype=torch.float64) * torch.tensor([1.0, 4.0]).view(2, 1, 1)
    x = bn.inv(y + torch.tensor([-3.0, 7.0], dtype=torch.float64).view(2, 1, 1))
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(x.std((0, 2, 3), unbiased=False), torch.ones(2, dtype=torch.float64))


def test_batchnorm_eval_matches_pyro_batchnorm() -> None:
    ours = _perturbed_bn(4, eps=1e-5)
    ours.inv(2.0 + torch.randn(128, 4, dtype=torch.float64))
    ours.eval()
    pyro_bn = PyroBatchNorm(4, epsilon=ours.eps).double().eval()
    with torch.no_grad():
        pyro_bn.gamma.copy_(ours.log_gamma.exp() - 1e-6)  # Pyro adds 1e-6 to relu(gamma)
        pyro_bn.beta.copy_(ours.beta)
        pyro_bn.moving_mean.copy_(ours.running_mean)
        pyro_bn.moving_variance.copy_(ours.running_var)
    y = torch.randn(10, 4, dtype=torch.float64)
    x_ours, x_pyro = ours.inv(y), pyro_bn.inv(y)
    torch.testing.assert_close(x_ours, x_pyro)
    torch.testing.assert_close(
        ours.log_abs_det_jacobian(x_ours, y),
        pyro_bn.log_abs_det_jacobian(x_pyro, y).sum(-1).expand(10),  # Pyro's is unbatched
    )


def test_batchnorm_eval_mode_is_an_exact_bijection() -> None:
    bn = _perturbed_bn(3)
    bn.inv(torch.randn(32, 3, dtype=torch.float64))
    before = bn.running_mean.clone()
    bn.eval()
    y = torch.randn(8, 3, dtype=torch.float64)
    torch.testing.assert_close(bn(bn.inv(y)), y)
    assert torch.equal(bn.running_mean, before)  # eval never updates statistics


def test_actnorm_data_init_on_inverse_standardizes_latent() -> None:
    t = ActNorm((3, 4, 4), eps=1e-12).double()
    shift = torch.tensor([1.0, -2.0, 5.0], dtype=torch.float64).view(3, 1, 1)
    y = shift + torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64).view(3, 1, 1) * torch.randn(
        128, 3, 4, 4, dtype=torch.float64
    )
    x = t.inv(y)
    assert bool(t.initialized)
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(x.std((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64))
    # initialised once: a later batch with other statistics does not re-initialise
    loc = t.loc.detach().clone()
    t.inv(10.0 + y)
    assert torch.equal(t.loc.detach(), loc)
    # and the log-det matches autograd in train and eval mode alike
    for mode in (True, False):
        t.train(mode)
        xs = torch.randn(3, 4, 4, dtype=torch.float64)
        torch.testing.assert_close(t.log_abs_det_jacobian(xs, t(xs)), _slogdet(t, xs))


def test_actnorm_forward_first_call_standardizes_output() -> None:
    t = ActNorm(2, eps=1e-12).double()
    y = t(3.0 + 4.0 * torch.randn(256, 2, dtype=torch.float64))
    torch.testing.assert_close(y.mean(0), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(2, dtype=torch.float64))


def test_actnorm_init_flag_survives_state_dict() -> None:
    t = ActNorm(2)
    t.inv(torch.randn(16, 2) * 3)
    sd = t.state_dict()
    fresh = ActNorm(2)
    assert not fresh.initialized
    fresh.load_state_dict(sd)
    y = torch.randn(5, 2) + 100.0  # would give very different parameters if re-initialised
    torch.testing.assert_close(fresh.inv(y), t.inv(y))


def test_actnorm_loading_an_uninitialized_state_resets_the_flag() -> None:
    t = ActNorm(2)
    fresh_state = ActNorm(2).state_dict()
    t.inv(torch.randn(8, 2))
    t.load_state_dict(fresh_state)  # back to "not initialised"
    x = t.inv(5.0 + 2.0 * torch.randn(64, 2))
    torch.testing.assert_close(x.mean(0), torch.zeros(2), atol=1e-5, rtol=0)


def test_actnorm_loads_legacy_state_with_the_flag_buffer() -> None:
    # state_dicts saved while the flag was a buffer still load (strict), with its meaning
    t = ActNorm(2)
    t.inv(torch.randn(16, 2) * 3)
    done = {**t.state_dict(), "initialized": torch.tensor(True)}
    not_done = {**t.state_dict(), "initialized": torch.tensor(False)}
    fresh = ActNorm(2)
    fresh.load_state_dict(done)
    y = torch.randn(5, 2) + 100.0
    torch.testing.assert_close(fresh.inv(y), t.inv(y))
    fresh.load_state_dict(not_done)
    assert not fresh.initialized
    x = fresh.inv(5.0 + 2.0 * torch.randn(64, 2))
    torch.testing.assert_close(x.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
