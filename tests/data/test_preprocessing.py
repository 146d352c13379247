"""Preprocessing: values, randomness, devices, and the logit log-det against autograd."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_gen.data import (
    bits_per_dim,
    dynamic_binarize,
    inverse_logit_transform,
    logit_transform,
    static_binarize,
    uniform_dequantize,
)


def test_dynamic_binarize_is_bernoulli_and_fresh(device: torch.device) -> None:
    x = torch.tensor([0, 64, 255], dtype=torch.uint8, device=device).expand(20000, 3)
    b1, b2 = dynamic_binarize(x), dynamic_binarize(x)
    assert b1.device.type == device.type and b1.dtype == torch.float32
    assert set(b1.unique().tolist()) <= {0.0, 1.0}
    assert b1.mean(0).tolist() == pytest.approx([0.0, 64 / 255, 1.0], abs=0.015)
    assert not b1.equal(b2)
    floats = dynamic_binarize(torch.full((20000,), 0.3, device=device))
    assert floats.mean().item() == pytest.approx(0.3, abs=0.015)


def test_static_binarize_is_fixed_per_seed(device: torch.device) -> None:
    x = torch.full((50, 784), 0.5, device=device)
    a = static_binarize(x, seed=0)
    assert a.equal(static_binarize(x, seed=0)) and not a.equal(static_binarize(x, seed=1))
    assert a.device.type == device.type and set(a.unique().tolist()) == {0.0, 1.0}
    # Same draw on every device; uint8 input means pixel / 255.
    assert a.cpu().equal(static_binarize(x.cpu(), seed=0))
    u8 = torch.full((50, 784), 255, dtype=torch.uint8, device=device)
    assert static_binarize(u8).eq(1).all() and static_binarize(torch.zeros_like(u8)).eq(0).all()


def test_uniform_dequantize_stays_in_its_bin(device: torch.device) -> None:
    x = torch.arange(256, device=device).to(torch.uint8).repeat(100)
    y = uniform_dequantize(x)
    assert y.device.type == device.type and y.dtype == torch.float32
    assert (y >= 0).all() and (y < 1).all()
    assert torch.floor(y * 256).long().equal(x.long())
    assert (y * 256 - x).mean().item() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("fn", [dynamic_binarize, uniform_dequantize])
def test_float64_data_for_a_double_model(fn) -> None:
    """float64 input, or integer pixels with dtype=torch.float64, give float64 data that a
    ``.double()`` network accepts whatever the default dtype (it refuses float32 with torch's
    dtype error); integer pixels without dtype= keep giving the default dtype."""
    net = torch.nn.Linear(3, 1).double()
    pixels = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    floats = pixels.double() / 255 if fn is dynamic_binarize else pixels.double()
    for y in (fn(floats), fn(pixels, dtype=torch.float64)):
        assert y.dtype == torch.float64
        net(y)
    assert fn(pixels).dtype == torch.get_default_dtype()
    assert fn(floats, dtype=torch.float32).dtype == torch.float32


def test_dtype_must_be_floating() -> None:
    pixels = torch.tensor([0, 255], dtype=torch.uint8)
    for fn in (dynamic_binarize, uniform_dequantize):
        with pytest.raises(TypeError, match=r"dtype= must be a floating torch dtype"):
            fn(pixels, dtype=torch.int64)


def _constant_rand(value: float):
    def rand(shape, generator=None, dtype=None, device=None):
        return torch.full(shape, value, dtype=dtype, device=device)

    return rand


def test_uniform_dequantize_top_bin_never_reaches_one(monkeypatch: pytest.MonkeyPatch) -> None:
    almost_one = 1 - 2**-24  # the largest float32 below 1
    monkeypatch.setattr(torch, "rand", _constant_rand(almost_one))
    y = uniform_dequantize(torch.tensor([255], dtype=torch.uint8))
    assert float(torch.tensor(255 + almost_one) / 256) == 1.0  # what clamping prevents
    assert 255 / 256 < y.item() < 1


@pytest.mark.parametrize("alpha", [0.0, 0.05, 1e-6])
def test_logit_log_det_matches_autograd(alpha: float) -> None:
    x = torch.rand(3, 2, 2, dtype=torch.float64) * 0.98 + 0.01
    y, log_det = logit_transform(x, alpha)
    assert y.shape == x.shape and log_det.shape == (3,)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(
            lambda v: logit_transform(v.reshape(1, 2, 2), alpha)[0].reshape(-1), x[i].reshape(-1)
        )
        assert log_det[i].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-10)
    assert inverse_logit_transform(y, alpha).sub(x).abs().max() < 1e-12


def test_logit_transform_keeps_device_and_rejects_ints(device: torch.device) -> None:
    y, log_det = logit_transform(torch.tensor([[0.0, 1.0]], device=device))
    assert torch.isfinite(y).all() and y.device.type == device.type
    assert log_det.device.type == device.type
    with pytest.raises(TypeError, match="dequantize"):
        logit_transform(torch.tensor([[3]], dtype=torch.uint8))
    with pytest.raises(ValueError, match="alpha"):
        logit_transform(torch.rand(1, 2), alpha=0.5)


def test_bits_per_dim() -> None:
    assert bits_per_dim(784 * math.log(2) * 3, 784) == pytest.approx(3.0)
    t = bits_per_dim(torch.tensor([0.0, 784 * math.log(2)]), 784)
    assert t.tolist() == pytest.approx([0.0, 1.0])
    # A uniform density on [0, 1]^D has NLL 0; on the 0..255 scale that is 8 bits/dim.
    assert bits_per_dim(0.0, 784, num_bins=256) == pytest.approx(8.0)
    with pytest.raises(ValueError):
        bits_per_dim(1.0, 0)


def test_range_checks_do_not_read_back_from_a_device():
    """The per-batch transforms check their input's range only where the read is free (CPU
    data): on a device the read would make each step wait. A meta tensor has no values, so
    any read back raises; the transforms must run on it without one."""
    from pyro_gen.data.preprocessing import dynamic_binarize, logit_transform, uniform_dequantize

    x = torch.empty(4, 3, device="meta")
    assert dynamic_binarize(x).device.type == "meta"
    assert uniform_dequantize(x, num_bins=4).device.type == "meta"
    assert logit_transform(x)[0].device.type == "meta"
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # the same values on the CPU: checked
        dynamic_binarize(torch.full((4, 3), 300.0))
