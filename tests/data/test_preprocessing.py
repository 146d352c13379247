"""Preprocessing: values, randomness, devices, and the logit log-det against autograd;
pixels whose scale is not 0..255 (``num_bins``), checked against the Bernoulli
probabilities k / (K - 1) of each level k."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_gen.data import (
    bits_per_dim,
    dynamic_binarize,
    inverse_logit_transform,
    load,
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


# Pixels whose scale is not 0..255: scikit-learn's 0..16 digits (load("digits")) and 0/1
# images stored as integers were read as 0..255, so each pixel came on with probability at
# most 16/255 (or 1/255): nearly blank images, with nothing said.
def _level_frequencies(b: torch.Tensor, x: torch.Tensor, levels: int) -> torch.Tensor:
    return torch.stack([b[x == k].double().mean() for k in range(levels)])


@pytest.mark.parametrize("fn", [dynamic_binarize, static_binarize])
def test_digits_without_their_scale_are_refused_naming_num_bins(fn) -> None:
    x, _ = load("digits", "test")
    with pytest.raises(ValueError, match=r"brightest pixel is 16.*num_bins=17"):
        fn(x)
    with pytest.raises(ValueError, match=r"brightest pixel is 16.*num_bins=17"):
        fn(x.long())  # the same levels as int64 take the float path


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_digits_binarize_with_probability_level_over_16(dtype) -> None:
    levels = torch.arange(17).repeat(20000).to(dtype)
    gen = torch.Generator().manual_seed(0)
    b = dynamic_binarize(levels, gen, num_bins=17)
    freq = _level_frequencies(b, levels, 17)
    expected = torch.arange(17, dtype=torch.float64) / 16
    stderr = (expected * (1 - expected) / 20000).sqrt().clamp(min=1e-12)
    assert bool(((freq - expected).abs() <= 5 * stderr).all()), (freq - expected).tolist()
    assert freq[0] == 0 and freq[16] == 1  # exact at the ends
    # a fixed draw is the draw of the intensities x / 16
    assert torch.equal(static_binarize(levels, 3, num_bins=17), static_binarize(levels / 16, 3))


def test_the_real_digits_binarize_to_their_mean_intensity() -> None:
    x, _ = load("digits", "train")
    b = dynamic_binarize(x, torch.Generator().manual_seed(1), num_bins=17)
    # 96,000 pixels: the mean of the draws is the mean intensity within a few 1e-3
    assert abs(float(b.mean()) - float(x.double().mean() / 16)) < 5e-3


@pytest.mark.parametrize("fn", [dynamic_binarize, static_binarize])
def test_zero_one_integer_images_need_their_scale(fn) -> None:
    x = (torch.rand(20, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).to(torch.uint8)
    with pytest.raises(ValueError, match=r"num_bins=2 \(or x.bool\(\)\) for 0/1"):
        fn(x)
    assert torch.equal(fn(x, num_bins=2), x.to(torch.get_default_dtype()))


def test_dark_8_bit_pixels_are_accepted_when_the_scale_is_said() -> None:
    x = torch.arange(1, 11, dtype=torch.uint8).repeat(30000)  # brightest pixel 10 of 255
    b = dynamic_binarize(x, torch.Generator().manual_seed(2), num_bins=256)
    freq = _level_frequencies(b, x, 11)[1:]
    expected = torch.arange(1, 11, dtype=torch.float64) / 255
    assert bool(((freq - expected).abs() <= 5 * (expected / 30000).sqrt()).all())
    # 8-bit pixels with a bright one and all-dark (zero) batches need no num_bins
    assert dynamic_binarize(torch.zeros(4, 4, dtype=torch.uint8)).sum() == 0
    assert dynamic_binarize(torch.tensor([3, 255], dtype=torch.uint8))[1] == 1


@pytest.mark.parametrize("fn", [dynamic_binarize, static_binarize])
def test_levels_beyond_num_bins_and_bad_num_bins_are_refused(fn) -> None:
    x = torch.tensor([0, 17], dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"0\.\.16 for num_bins=17, found values from 0 to 17"):
        fn(x, num_bins=17)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="num_bins= must be the number of integer"):
            fn(x, num_bins=bad)


def test_binarize_and_dequantize_read_digits_on_the_same_scale() -> None:
    """``num_bins=17`` means the same levels to the binarizer and the dequantizer."""
    x, _ = load("digits", "test")
    y = uniform_dequantize(x, 17, torch.Generator().manual_seed(0))
    assert bool(((y * 17).floor() == x).all())
    assert dynamic_binarize(x, num_bins=17).shape == x.shape


def test_dequantizing_digits_without_their_scale_is_refused() -> None:
    """``uniform_dequantize(digits)`` squeezed 0..16 into [0, 17/256) and was scored as 8-bit
    data; 0/1 booleans likewise into [0, 2/256)."""
    x, _ = load("digits", "test")
    with pytest.raises(
        ValueError, match=r"uniform_dequantize: .*brightest pixel is 16.*num_bins=17"
    ):
        uniform_dequantize(x)
    with pytest.raises(ValueError, match=r"brightest pixel is 1\b.*num_bins=2"):
        uniform_dequantize(torch.tensor([True, False]))
    # an explicit 256 is a statement that these are dark 8-bit pixels: bins of width 1/256
    y = uniform_dequantize(x, 256, torch.Generator().manual_seed(0))
    assert bool(((y * 256).floor() == x).all())
    # bright 8-bit pixels need no num_bins, as before
    pixels = torch.tensor([0, 200, 255], dtype=torch.uint8)
    assert bool(((uniform_dequantize(pixels) * 256).floor() == pixels).all())


def test_logit_transform_takes_numpy_intensities_like_their_tensors() -> None:
    """numpy intensities failed with "'numpy.ndarray' object has no attribute ..."."""
    x = np.random.default_rng(0).uniform(size=(5, 3))
    y, log_det = logit_transform(x)
    y_t, log_det_t = logit_transform(torch.from_numpy(x))
    assert torch.equal(y, y_t) and torch.equal(log_det, log_det_t)
    # the closed form log|dy/dx| = sum log(1 - 2a) - log p - log(1 - p), p = a + (1 - 2a) x
    p = 0.05 + 0.9 * x
    np.testing.assert_allclose(log_det.numpy(), (np.log(0.9) - np.log(p * (1 - p))).sum(-1))
    assert torch.allclose(inverse_logit_transform(y.numpy()), torch.from_numpy(x))
    with pytest.raises(TypeError, match="inverse_logit_transform: y must be a tensor"):
        inverse_logit_transform([0.0])
