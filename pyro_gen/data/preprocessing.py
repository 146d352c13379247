"""Turning uint8 images into what likelihoods need: binary, dequantized or logit-space data.

Every function works on the device of its input and returns a tensor there. Integer
inputs are read as pixels in ``0..255``; floating inputs as intensities in ``[0, 1]``.
:func:`dynamic_binarize` and :func:`uniform_dequantize` return floats of the input's own
floating dtype, or of torch's default dtype for integer input, unless ``dtype=`` says
otherwise (so a ``.double()`` model gets float64 data under float32 defaults).

References:
    R. Salakhutdinov, I. Murray, "On the quantitative analysis of deep belief networks",
    ICML 2008 (binarized MNIST).
    L. Theis, A. van den Oord, M. Bethge, "A note on the evaluation of generative models",
    arXiv:1511.01844 (dequantization, bits/dim).
    L. Dinh, J. Sohl-Dickstein, S. Bengio, "Density estimation using Real NVP",
    arXiv:1605.08803 (logit transform).
"""

from __future__ import annotations

import math

import numpy as np
import torch

_PIXEL_LEVELS = 256
#: Without ``num_bins=``, integer pixels whose batch maximum is below this are refused as
#: ambiguous (see :func:`_check_levels`).
_DARK_MAX = 32


def _as_tensor(x: object, caller: str, name: str = "x") -> torch.Tensor:
    """``x`` as a tensor: a user's numpy images (from scikit-learn, PIL or a ``.npz``) failed
    with "'numpy.ndarray' object has no attribute ..." from inside."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{caller}: {name} must be a tensor (or numpy array), got {type(x).__name__}")


def _range(x: torch.Tensor) -> tuple[float, float] | None:
    """The smallest and largest value, where reading them back is cheap: None on an
    accelerator, where the read would make every batch's transform wait for the device (and
    the step behind it); the checks that use it run on CPU data only."""
    if x.device.type != "cpu" or x.numel() == 0:
        return None
    x = x.detach()  # a float() of a tensor that requires grad warns
    low, high = torch.aminmax(x)
    return float(low), float(high)


def _levels(num_bins: int | None, caller: str) -> int:
    """The number of integer pixel levels ``num_bins`` stands for (256 when not given)."""
    if num_bins is None:
        return _PIXEL_LEVELS
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(
            f"{caller}: num_bins= must be the number of integer pixel levels, at least 2 "
            f"(256 for 8-bit pixels, 17 for scikit-learn's 0..16 digits), got {num_bins!r}"
        )
    return num_bins


def _intensity(
    x: torch.Tensor,
    caller: str,
    dtype: torch.dtype | None = None,
    num_bins: int | None = None,
) -> torch.Tensor:
    """Pixels as probabilities in [0, 1]: floats as they are, booleans (already binary
    images) as 0 and 1, other integers as levels ``0..num_bins - 1`` (0..255 by default). A
    value outside is refused, since a comparison with uniform noise would turn it into a
    plausible-looking binary image."""
    levels = _levels(num_bins, caller)
    out = dtype or torch.get_default_dtype()
    if x.dtype == torch.bool:
        # bool / 255 made every True pixel a 1-in-255 chance: binary images came back blank
        return x.to(out)
    found = _range(x)
    if x.is_floating_point():
        # float pixels 0..255 (x.float() of uint8 images) came back all ones, NaN as zeros
        if found is not None and not (found[0] >= 0.0 and found[1] <= 1.0):
            raise ValueError(
                f"{caller}: floating x must be intensities in [0, 1], found values from "
                f"{found[0]:.4g} to {found[1]:.4g}: divide 0..255 pixels by 255 (or pass the "
                "uint8 pixels themselves), map [-1, 1] images with (x + 1) / 2"
            )
        return x
    if found is not None:
        _check_levels(found, levels, num_bins is None, caller)
    return x.to(out) / (levels - 1)


def _check_levels(found: tuple[float, float], levels: int, default: bool, caller: str) -> None:
    """Integer pixels must lie in ``0..levels - 1``. Without ``num_bins=``, a batch whose
    brightest pixel is 1..31 is refused too: read as 0..255 it binarizes to nearly blank
    images (at most 1 pixel in 8 on), which is what scikit-learn's 0..16 digits and 0/1
    images stored as integers silently became; ``num_bins=256`` accepts such dark pixels."""
    low, high = found
    if low < 0 or high > levels - 1:
        raise ValueError(
            f"{caller}: integer x must be pixels in 0..{levels - 1}"
            + ("" if default else f" for num_bins={levels}")
            + f", found values from {low:g} to {high:g}: pass num_bins= the number of "
            "levels, or intensities in [0, 1] instead, e.g. x / x.max()"
        )
    if default and 0 < high < _DARK_MAX:
        raise ValueError(
            f"{caller}: integer x whose brightest pixel is {high:g} would be read as 0..255 "
            f"pixels, at most {high / 255:.1%} of full scale; say what scale "
            f"they are on: num_bins={int(high) + 1} for levels 0..{high:g} (scikit-learn's "
            "digits, load('digits'), are 0..16: num_bins=17), num_bins=2 (or x.bool()) for 0/1 "
            "images, or num_bins=256 for dark 8-bit pixels"
        )


def _output_dtype(x: torch.Tensor, dtype: torch.dtype | None, caller: str) -> torch.dtype:
    """``dtype=`` if given, else the input's floating dtype, else torch's default: data the
    user already holds in float64 must stay float64, or a float64 model fails on it."""
    if dtype is None:
        return x.dtype if x.is_floating_point() else torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"{caller}: dtype= must be a floating torch dtype such as torch.float64, got {dtype!r}"
        )
    return dtype


def dynamic_binarize(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype | None = None,
    num_bins: int | None = None,
) -> torch.Tensor:
    r"""A fresh Bernoulli draw per pixel, :math:`b \sim \mathrm{Bernoulli}(x / (K - 1))`, at
    every call (:math:`K` = ``num_bins`` integer levels; floats are used as they are).

    Calling it on every minibatch gives each epoch new binary images, which regularises
    models trained on binarized MNIST.

    Args:
        x: integer pixels in ``0..num_bins - 1`` (uint8 0..255 by default), floats in
            [0, 1] or booleans (a tensor or numpy array), on any device; values outside
            are refused, and so are integer pixels no brighter than 31 when ``num_bins`` is
            not given (they are rarely 0..255 pixels; checked on CPU data: on an
            accelerator the check would make every batch wait for the device).
        generator: optional RNG (on ``x``'s device); the global one by default.
        dtype: floating dtype of the result; by default ``x``'s own if it is floating,
            else torch's default dtype.
        num_bins: number of integer levels :math:`K` of ``x``: 256 (the default) for 8-bit
            pixels, 17 for scikit-learn's 0..16 digits (``load("digits")``).

    Returns:
        floats in {0, 1} with ``x``'s shape, on ``x``'s device.

    Example:
        >>> b = dynamic_binarize(torch.tensor([0, 255, 128], dtype=torch.uint8))
        >>> b[:2].tolist(), b.dtype
        ([0.0, 1.0], torch.float32)
        >>> dynamic_binarize(torch.tensor([0, 255], dtype=torch.uint8), dtype=torch.float64).dtype
        torch.float64
        >>> dynamic_binarize(torch.tensor([0, 16], dtype=torch.uint8), num_bins=17).tolist()
        [0.0, 1.0]
    """
    x = _as_tensor(x, "dynamic_binarize")
    out = _output_dtype(x, dtype, "dynamic_binarize")
    # A comparison with uniform noise is the same Bernoulli draw as torch.bernoulli at a
    # quarter of its cost on the CPU, which matters when it runs on every minibatch.
    levels = _levels(num_bins, "dynamic_binarize")
    if x.dtype == torch.uint8 and levels <= _PIXEL_LEVELS:
        found = _range(x)
        if found is not None:
            _check_levels(found, levels, num_bins is None, "dynamic_binarize")
        # r uniform on {0, ..., K - 2}: P(r < k) = k / (K - 1) exactly, with no float
        # conversion.
        r = torch.randint(
            0, levels - 1, x.shape, dtype=torch.uint8, device=x.device, generator=generator
        )
        return (r < x).to(out)
    p = _intensity(x, "dynamic_binarize", out, num_bins)
    u = torch.rand(p.shape, dtype=p.dtype, device=p.device, generator=generator)
    return (u < p).to(out)


def static_binarize(x: torch.Tensor, seed: int = 0, *, num_bins: int | None = None) -> torch.Tensor:
    r"""One fixed Bernoulli draw, :math:`b = [u < x / (K - 1)]` with :math:`u` from ``seed``.

    The uniforms are drawn on the CPU with ``seed`` and then moved, so the same data and
    seed give the same binary images on every device.

    Args:
        x: integer pixels in ``0..num_bins - 1``, floats in [0, 1] or booleans (a tensor
            or numpy array), checked as by :func:`dynamic_binarize`.
        seed: seed of the draw.
        num_bins: number of integer levels :math:`K` of ``x`` (256 by default; 17 for
            scikit-learn's 0..16 digits).

    Example:
        >>> x = torch.full((2, 3), 0.5)
        >>> torch.equal(static_binarize(x, seed=1), static_binarize(x, seed=1))
        True
    """
    p = _intensity(_as_tensor(x, "static_binarize"), "static_binarize", num_bins=num_bins)
    generator = torch.Generator().manual_seed(int(seed))
    u = torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device)
    return (u < p).to(p.dtype)


def uniform_dequantize(
    x: torch.Tensor,
    num_bins: int | None = None,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Spread integer levels over their bins: :math:`y = (x + u) / K`, :math:`u \sim U[0,1)`.

    A continuous density fitted to ``y`` lower-bounds the discrete log-likelihood of
    ``x`` minus :math:`D \log K` (see :func:`bits_per_dim`).

    Args:
        x: integer levels in ``0..num_bins - 1`` (e.g. uint8 pixels, or whole-number
            floats), a tensor or numpy array; anything else is refused (checked on CPU
            data, as for :func:`dynamic_binarize`).
        num_bins: number of levels :math:`K`: 256 (the default) for 8-bit pixels, 17 for
            scikit-learn's 0..16 digits; without it, levels no higher than 31 are refused
            as of unknown scale, as by :func:`dynamic_binarize`.
        generator: optional RNG (on ``x``'s device).
        dtype: floating dtype of the result; by default ``x``'s own if it is floating
            (levels held as floats), else torch's default dtype.

    Returns:
        floats in [0, 1) on ``x``'s device.

    Example:
        >>> y = uniform_dequantize(torch.tensor([0, 255], dtype=torch.uint8))
        >>> bool(y[0] < 1 / 256) and bool(255 / 256 <= y[1] < 1), y.dtype
        (True, torch.float32)
        >>> uniform_dequantize(torch.tensor([0.0, 255.0], dtype=torch.float64)).dtype
        torch.float64
    """
    x = _as_tensor(x, "uniform_dequantize")
    dtype = _output_dtype(x, dtype, "uniform_dequantize")
    # uint8 pixels into 256 or more bins (and booleans into 2 or more) are levels by their
    # dtype: no check, so the usual per-batch call does not wait on the device for a min/max
    given, num_bins = num_bins is not None, _levels(num_bins, "uniform_dequantize")
    levels = {torch.uint8: 256, torch.bool: 2}.get(x.dtype)
    skip = given and levels is not None and num_bins >= levels
    found = None if skip else _range(x)
    if found is not None:
        # floats in [0, 1] were read as levels and squeezed into [0, 2 / K), and levels of
        # K or more were clamped to just below 1: both silently wrong data for the flow
        low, high = found
        integral = not x.is_floating_point() or bool((x == x.round()).all())
        if not integral or low < 0 or high > num_bins - 1:
            raise ValueError(
                f"uniform_dequantize: x must be integer levels in 0..{num_bins - 1} for "
                f"num_bins={num_bins}, found values from {low:.4g} to {high:.4g}"
                + ("" if integral else " that are not whole numbers")
                + ": pass the uint8 pixels (not x / 255), or num_bins= the number of levels"
            )
        if not given:
            # scikit-learn's 0..16 digits (and 0/1 images) were squeezed into [0, 17 / 256)
            # and scored as 8-bit data, with nothing said
            _check_levels(found, num_bins, True, "uniform_dequantize")
    u = torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)
    y = (x.to(dtype) + u) / num_bins
    # (K - 1 + u) / K can round up to exactly 1 in float32.
    return y.clamp(max=1.0 - torch.finfo(dtype).eps / 2)


def logit_transform(x: torch.Tensor, alpha: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Map [0, 1] data to the real line, :math:`y = \mathrm{logit}(\alpha + (1 - 2\alpha) x)`.

    Squeezing by :math:`\alpha` keeps the logit finite at 0 and 1. The log-determinant
    of the Jacobian, summed over every dimension but the first (batch) one, is

    .. math::
        \log\left|\det \frac{\partial y}{\partial x}\right|
        = \sum_i \log(1 - 2\alpha) - \log p_i - \log(1 - p_i),
        \quad p = \alpha + (1 - 2\alpha) x,

    so :math:`\log p_X(x) = \log p_Y(y) + \text{log\_det}`.

    Args:
        x: floats in [0, 1], shape ``(batch, ...)``, a tensor or numpy array.
        alpha: squeeze, in [0, 0.5).

    Returns:
        ``(y, log_det)`` with ``y`` shaped like ``x`` and ``log_det`` of shape ``(batch,)``.

    Example:
        >>> y, log_det = logit_transform(torch.full((1, 3), 0.5))
        >>> y.tolist(), round(log_det.item(), 4)
        ([[0.0, 0.0, 0.0]], 3.8428)
    """
    # numpy intensities failed with "'numpy.ndarray' object has no attribute ..."
    x = _as_tensor(x, "logit_transform")
    if not x.is_floating_point():
        raise TypeError("logit_transform expects floats in [0, 1]; dequantize integers first")
    if not 0.0 <= alpha < 0.5:
        raise ValueError(f"alpha must be in [0, 0.5); got {alpha}")
    found = _range(x)
    if found is not None:
        # 0..255 floats gave NaN everywhere (the logit of p > 1), with nothing said
        low, high = found
        if not (low >= 0.0 and high <= 1.0):
            raise ValueError(
                f"logit_transform: x must be floats in [0, 1], found values from {low:.4g} to "
                f"{high:.4g}: dequantize 0..255 pixels with uniform_dequantize first"
            )
    p = alpha + (1 - 2 * alpha) * x
    y = torch.log(p) - torch.log1p(-p)
    log_det = math.log1p(-2 * alpha) - torch.log(p) - torch.log1p(-p)
    return y, log_det.reshape(x.shape[0], -1).sum(-1)


def inverse_logit_transform(y: torch.Tensor, alpha: float = 0.05) -> torch.Tensor:
    r"""Undo :func:`logit_transform`: :math:`x = (\sigma(y) - \alpha) / (1 - 2\alpha)`.

    Example:
        >>> x = torch.rand(4, 3)
        >>> torch.allclose(inverse_logit_transform(logit_transform(x)[0]), x, atol=1e-6)
        True
    """
    y = _as_tensor(y, "inverse_logit_transform", "y")
    return (torch.sigmoid(y) - alpha) / (1 - 2 * alpha)


def bits_per_dim(
    nll_nats: float | torch.Tensor,
    num_dims: int | tuple[int, ...],
    *,
    num_bins: int | None = None,
) -> float | torch.Tensor:
    r"""Convert a negative log-likelihood in nats per example to bits per dimension.

    .. math:: \mathrm{bpd} = \frac{\mathrm{NLL} + D \log K}{D \log 2}

    where the :math:`D \log K` term is added only when ``num_bins`` :math:`K` is given:
    pass it when the density was fitted to data rescaled from :math:`K` integer levels
    to [0, 1] (e.g. :func:`uniform_dequantize` output), to report bits/dim on the
    integer scale as is customary.

    Args:
        nll_nats: NLL per example in nats (float or tensor).
        num_dims: dimensions per example :math:`D` (784 for MNIST), or an event shape
            such as ``x.shape[1:]`` (its element count).
        num_bins: levels :math:`K` of the original data, if the data were rescaled.

    Example:
        >>> round(bits_per_dim(784 * math.log(2), 784), 6)
        1.0
        >>> round(bits_per_dim(-784 * math.log(256), 784, num_bins=256), 6)
        0.0
    """
    # an event shape (x.shape[1:], a flow's event_shape) failed with "'<=' not supported
    # between instances of 'torch.Size' and 'int'": its element count is what is meant
    if isinstance(num_dims, tuple | list):
        num_dims = math.prod(num_dims)
    if isinstance(num_dims, bool) or int(num_dims) != num_dims or num_dims <= 0:
        raise ValueError(
            f"num_dims must be a positive whole number of dimensions per example (or an "
            f"event shape such as x.shape[1:]); got {num_dims!r}"
        )
    # num_bins=0 failed with "math domain error", and fractional levels mean nothing
    if num_bins is not None and (
        isinstance(num_bins, bool) or int(num_bins) != num_bins or num_bins < 1
    ):
        raise ValueError(
            f"num_bins must be the number of integer levels of the data (256 for 8-bit "
            f"pixels), got {num_bins!r}"
        )
    offset = num_dims * math.log(num_bins) if num_bins is not None else 0.0
    return (nll_nats + offset) / (num_dims * math.log(2))
