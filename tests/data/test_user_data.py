"""Preprocessing and batching with a user's own data: booleans, 0..255 floats, [0, 1] floats
handed to the dequantizer, numpy arrays. Each used to come back as plausible-looking wrong
data (or a full-data step where a minibatch was asked for)."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.data import (
    bits_per_dim,
    dynamic_binarize,
    logit_transform,
    static_binarize,
    uniform_dequantize,
)
from pyro_gen.data.batching import DeviceBatches, batch_calls
from pyro_gen.infer import fit


def test_boolean_images_stay_the_binary_images_they_are() -> None:
    """``x > 0.5`` is how users binarize; a Bernoulli draw of a 0/1 image is that image
    (it was drawn with probability 1/255 per True pixel: nearly blank images)."""
    x = torch.rand(20, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5
    expected = x.to(torch.get_default_dtype())
    assert torch.equal(dynamic_binarize(x), expected)
    assert torch.equal(static_binarize(x, seed=3), expected)
    assert dynamic_binarize(x, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("fn", [dynamic_binarize, static_binarize])
def test_float_pixels_out_of_the_unit_interval_are_refused(fn) -> None:
    """``x.float()`` of uint8 MNIST came back as all ones wherever a pixel was not 0."""
    pixels = torch.randint(0, 256, (4, 28, 28))
    with pytest.raises(ValueError, match=r"floating x must be intensities in \[0, 1\].*255"):
        fn(pixels.float())
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        fn(torch.rand(4, 3) * 2 - 1)
    with pytest.raises(ValueError, match="integer x must be pixels in 0..255"):
        fn(pixels * 4)  # int64 levels of another scale
    # the same pixels as uint8, int64 or x / 255 are the same Bernoulli probabilities
    a = static_binarize(pixels.to(torch.uint8), seed=1)
    assert torch.equal(a, static_binarize(pixels, seed=1))
    assert torch.equal(a, static_binarize(pixels.float() / 255, seed=1))


def test_numpy_images_work_like_their_tensors() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 8)).astype(np.uint8)
    t = torch.from_numpy(pixels)
    assert torch.equal(static_binarize(pixels, seed=2), static_binarize(t, seed=2))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(dynamic_binarize(pixels, g1), dynamic_binarize(t, g2))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(uniform_dequantize(pixels, 256, g1), uniform_dequantize(t, 256, g2))
    with pytest.raises(TypeError, match="x must be a tensor"):
        dynamic_binarize([[0, 255]])


def test_dequantizing_intensities_instead_of_levels_is_refused() -> None:
    """Floats in [0, 1] were read as levels: every pixel landed in [0, 2/256), and a flow
    fitted to them reported a bits/dim for data it never saw."""
    with pytest.raises(ValueError, match=r"integer levels in 0..255.*not whole numbers"):
        uniform_dequantize(torch.rand(3, 4))
    with pytest.raises(ValueError, match=r"integer levels in 0..16 for num_bins=17"):
        uniform_dequantize(torch.tensor([0, 255], dtype=torch.uint8), 17)
    # whole-number floats are levels, as before: each lands in its own bin
    levels = torch.arange(17, dtype=torch.float64)
    y = uniform_dequantize(levels, 17)
    assert y.dtype == torch.float64 and torch.equal((y * 17).floor(), levels)


def test_logit_of_pixels_out_of_range_is_refused_not_nan() -> None:
    with pytest.raises(ValueError, match=r"x must be floats in \[0, 1\].*uniform_dequantize"):
        logit_transform(torch.tensor([[0.0, 200.0]]))


def test_bits_per_dim_of_a_known_discrete_likelihood() -> None:
    """Dequantized pixels under the density that is uniform on each of K bins with bin
    masses q_k: the continuous log-density is log(K q_k) per pixel, so bits/dim with
    num_bins=K is -mean(log2 q_k), the discrete model's exact bits/dim."""
    k, d = 17, 64
    q = torch.softmax(torch.randn(k, generator=torch.Generator().manual_seed(0)), 0).double()
    x = torch.randint(0, k, (10, d), generator=torch.Generator().manual_seed(1))
    y = uniform_dequantize(x, k, dtype=torch.float64)
    bins = (y * k).floor().long()
    assert torch.equal(bins, x)
    log_density = torch.log(k * q[bins]).sum(-1)  # nats per example on [0, 1]^d
    bpd = bits_per_dim(-log_density, d, num_bins=k)
    exact = -torch.log2(q[x]).mean(-1)
    torch.testing.assert_close(bpd, exact)
    assert bits_per_dim(-log_density.mean().item(), d, num_bins=k) == pytest.approx(
        exact.mean().item()
    )
    assert math.isclose(bits_per_dim(0.0, d, num_bins=k), math.log2(k))


def _model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    loc = pyro.param("loc", torch.zeros(2))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=torch.as_tensor(x))


def _guide(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    pass


@pytest.mark.parametrize(
    "data, where",
    [
        ((np.zeros((10, 2), np.float32),), r"data\[0\]"),
        ((np.zeros((10, 2), np.float32), torch.arange(10)), r"data\[0\]"),
        ({"x": torch.zeros(10, 2), "y": np.arange(10)}, r"data\['y'\]"),
    ],
    ids=["numpy-tuple", "numpy-beside-a-tensor", "numpy-in-a-dict"],
)
def test_numpy_datasets_in_a_tuple_or_dict_are_refused_not_passed_whole(data, where) -> None:
    """fit(model, (x_numpy,), batch_size=4) ran 100 full-data steps an epoch (no tensor:
    "the same call at every step"), and a numpy x beside a tensor y went whole into every
    step beside 4 labels."""
    with pytest.raises(TypeError, match=where + r" is a numpy array of shape .*torch.as_tensor"):
        fit(_model, data, guide=_guide, steps=1, batch_size=4, progress=False)
    # the same data as tensors: batches of 4 rows, sliced together
    tensors = (
        {k: torch.as_tensor(v) for k, v in data.items()}
        if isinstance(data, dict)
        else tuple(map(torch.as_tensor, data))
    )
    calls = batch_calls(tensors, 4, shuffle=False)
    sizes = [c.size for c in calls]
    assert sizes == [4, 4, 2]
    # a numpy scalar (a model's constant) is no dataset and passes as before
    call = next(iter(batch_calls((torch.zeros(10, 2), np.float32(0.5)), 4, shuffle=False)))
    assert call.args[1] == np.float32(0.5)


def _normal_model(x) -> None:
    """Takes numpy or tensor batches alike, as a user's model that calls torch.as_tensor."""
    x = torch.as_tensor(x, dtype=torch.float32)
    loc = pyro.param("loc", torch.zeros(()))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)


def test_numpy_batches_count_their_rows_in_the_per_example_loss() -> None:
    """A user's generator of numpy batches: each batch counted as one example, so the
    train_loss (a per-example mean) came out per batch, about 25 times the true value."""
    xs = np.random.default_rng(0).standard_normal(74).astype(np.float32)

    def numpy_batches():
        return iter([xs[:32], xs[32:64], xs[64:]])

    pyro.clear_param_store()
    result = fit(
        _normal_model,
        numpy_batches,
        guide=_guide,
        epochs=1,
        optim=pyro.optim.Adam({"lr": 0.0}),  # loc stays 0: the loss has a closed form
        progress=False,
    )
    exact = float(-dist.Normal(0.0, 1.0).log_prob(torch.from_numpy(xs)).double().mean())
    assert result.history[-1]["train_loss"] == pytest.approx(exact, rel=1e-6)
    assert [c.size for c in batch_calls(numpy_batches, 4, shuffle=False)] == [32, 32, 10]


def test_device_batches_refuse_a_numpy_column_instead_of_repeating_it_whole() -> None:
    with pytest.raises(TypeError, match=r"data\['y'\] is a numpy array of shape \(10,\)"):
        DeviceBatches({"x": torch.zeros(10, 2), "y": np.arange(10)}, 4)
    batches = DeviceBatches({"x": torch.zeros(10, 2), "y": torch.arange(10)}, 4, shuffle=False)
    assert [b["y"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_bits_per_dim_takes_an_event_shape_and_refuses_nonsense_levels() -> None:
    """bits_per_dim(nll, x.shape[1:]) failed with "'<=' not supported between 'torch.Size'
    and 'int'", num_bins=0 with "math domain error", and num_dims=784.5 gave a number."""
    nll = 784 * math.log(2) * 3
    assert bits_per_dim(nll, torch.Size([1, 28, 28])) == pytest.approx(3.0)
    assert bits_per_dim(nll, (28, 28), num_bins=256) == bits_per_dim(nll, 784, num_bins=256)
    with pytest.raises(ValueError, match=r"num_bins must be the number of integer levels.*0"):
        bits_per_dim(nll, 784, num_bins=0)
    with pytest.raises(ValueError, match=r"num_dims must be a positive whole number.*784.5"):
        bits_per_dim(nll, 784.5)
