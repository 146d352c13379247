"""Binarizing pixels whose scale is not 0..255: scikit-learn's 0..16 digits (``load("digits")``)
and 0/1 images stored as integers were read as 0..255, so each pixel came on with probability
at most 16/255 (or 1/255): nearly blank images, with nothing said. Checked against the
Bernoulli probabilities k / (K - 1) of each level k."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_gen.data import (
    dynamic_binarize,
    inverse_logit_transform,
    load,
    logit_transform,
    static_binarize,
    uniform_dequantize,
)


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
